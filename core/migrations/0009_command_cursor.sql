-- How far the dispatch leader has sent commands to patrol phones (dispatch/command_sender.py):
-- the events after this seq are (re)sent by whichever process leads next. One row.
CREATE TABLE command_cursor (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
