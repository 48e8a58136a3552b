-- Per-device SenML name mapping (ingest/senml_names.py): overrides of the default metric
-- for a unit ("Cel") or an LwM2M path ("3303/0/5700") in the records that name the device
-- alone or through an LwM2M path. Edited by PUT /api/devices/{id}/senml-map.
ALTER TABLE devices ADD COLUMN senml_map jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(senml_map) = 'object');
