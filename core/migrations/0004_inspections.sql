-- "Double random, one public" (双随机一公开) inspections: the registries a draw picks from,
-- the draws themselves (seed and every input kept, so anyone can re-run one), and the
-- published results. The draw algorithm is dispatch/inspections.py.

-- Inspectors (执法检查人员名录): one department each; the draw for a matter only picks
-- inspectors of the matter's department. unit_id: the squad they serve in, if any.
CREATE TABLE inspectors (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    department  text NOT NULL,                 -- a key of the town's departments (work_safety, ...)
    unit_id     text REFERENCES units (id),
    active      boolean NOT NULL DEFAULT true
);
CREATE INDEX inspectors_department ON inspectors (department) WHERE active;

-- Market entities (检查对象名录). risk_class follows the market-supervision credit-risk
-- classes (企业信用风险分类): A = low risk, B = ordinary, C = elevated, D = high risk.
-- Risk-weighted draws pick D most often.
CREATE TABLE market_entities (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    grid_id     text NOT NULL REFERENCES grids (id),
    industry    text NOT NULL,                 -- 餐饮服务, 危险化学品, ... (matched by matters)
    risk_class  text NOT NULL CHECK (risk_class IN ('A', 'B', 'C', 'D')),
    lon         double precision,
    lat         double precision,
    active      boolean NOT NULL DEFAULT true  -- false: closed down, never drawn
);
CREATE INDEX market_entities_industry ON market_entities (industry) WHERE active;

-- Inspection matters (随机抽查事项清单). industries: the industries the matter applies to;
-- empty means every entity (e.g. fire safety).
CREATE TABLE inspection_matters (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    department  text NOT NULL,
    description text NOT NULL DEFAULT '',
    industries  text[] NOT NULL DEFAULT '{}'
);

-- Recusal (回避): an inspector is never drawn for an entity listed here.
CREATE TABLE inspector_conflicts (
    inspector_id text NOT NULL REFERENCES inspectors (id),
    entity_id    text NOT NULL REFERENCES market_entities (id),
    reason       text NOT NULL,
    PRIMARY KEY (inspector_id, entity_id)
);

-- One row per draw, kept forever (a draw is never deleted or redrawn in place, so drawing
-- again and again until a wished-for result comes up shows in this table).
-- params: every input of the draw (matter and department, targets, inspectors per target,
-- risk weights, the inspector and entity pools with risk classes, the conflict pairs), so a
-- later registry change does not stop the draw from being re-run; result: the picks.
CREATE TABLE inspection_draws (
    id            bigserial PRIMARY KEY,
    seed          text NOT NULL,
    matter_id     text NOT NULL REFERENCES inspection_matters (id),
    params        jsonb NOT NULL,
    drawn_at      timestamptz NOT NULL,
    drawn_by      text NOT NULL,
    algorithm     text NOT NULL,               -- dispatch/inspections.py ALGORITHM
    result        jsonb NOT NULL,
    published     boolean NOT NULL DEFAULT false,
    published_at  timestamptz,
    published_by  text
);
CREATE INDEX inspection_draws_matter ON inspection_draws (matter_id, drawn_at DESC);
CREATE INDEX inspection_draws_published ON inspection_draws (published_at DESC) WHERE published;

-- What each inspection found: one row per drawn entity, recorded once (the primary key
-- refuses a second result, so a published outcome cannot be quietly rewritten).
CREATE TABLE inspection_results (
    draw_id      bigint NOT NULL REFERENCES inspection_draws (id),
    entity_id    text NOT NULL REFERENCES market_entities (id),
    outcome      text NOT NULL CHECK (outcome IN ('no_problem', 'rectification_ordered',
                                                  'case_filed', 'not_found', 'refused')),
    notes        text NOT NULL DEFAULT '',
    recorded_by  text NOT NULL,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (draw_id, entity_id)
);

-- Patrol figures per unit and China-time day (dispatch/reports.py rollup_patrol, from the
-- positions hypertable through dispatch/assessment.py patrol_stats): assessment reports
-- sum days instead of reading every GPS fix of a month.
CREATE TABLE patrol_daily (
    unit_id        text NOT NULL,
    day            date NOT NULL,
    distance_m     double precision NOT NULL,
    moving_s       double precision NOT NULL,
    stopped_s      double precision NOT NULL,
    duty_s         double precision NOT NULL,
    trips          integer NOT NULL,
    stops          integer NOT NULL,
    dropped_jumps  integer NOT NULL,
    fixes          integer NOT NULL,
    computed_at    timestamptz NOT NULL,
    PRIMARY KEY (unit_id, day)
);
