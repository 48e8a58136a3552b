-- A 'fleet' MQTT account speaks for many devices and patrol units, like a gateway, and also
-- reads the units' command topics: a radio/PoC trunking gateway, or the simulated crews.
-- A sensor gateway stays a 'gateway' and cannot read dispatch commands.
ALTER TABLE mqtt_accounts DROP CONSTRAINT mqtt_accounts_kind_check;
ALTER TABLE mqtt_accounts ADD CONSTRAINT mqtt_accounts_kind_check
    CHECK (kind IN ('device', 'unit', 'gateway', 'fleet', 'service'));
-- The set-up's simulator and test accounts answer dispatches: they become fleets.
UPDATE mqtt_accounts SET kind = 'fleet' WHERE principal IN ('gw-sim', 'gw-test')
    AND kind = 'gateway';
