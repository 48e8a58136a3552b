-- The dispatch decision core (dispatch/planner.py) explains itself with reason codes the
-- pages translate: the code and its parameters are kept next to the English text.
ALTER TABLE assignments ADD COLUMN why jsonb;
ALTER TABLE supervisor_alerts ADD COLUMN why jsonb;
-- An operator may redirect a unit that is on its way: the assignment it leaves ends as
-- 'redirected', and that unit is not planned onto that case again.
ALTER TABLE assignments DROP CONSTRAINT assignments_status_check;
ALTER TABLE assignments ADD CONSTRAINT assignments_status_check
    CHECK (status IN ('active', 'accepted', 'declined', 'superseded', 'escalated',
                      'preempted', 'redirected', 'done'));
-- Every decision reads each unit's cases today and each open case's barred units: both by
-- index, not by scanning all assignments ever made.
CREATE INDEX assignments_unit_day ON assignments (unit_id, assigned_at);
CREATE INDEX assignments_incident ON assignments (incident_id);
