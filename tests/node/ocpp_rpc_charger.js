// A charge point from another OCPP implementation than the site's: ocpp-rpc (Node), in
// strict mode, so every call and answer is checked against ocpp-rpc's own copy of the
// OCPP JSON schemas.  Used by tests/test_ocpp_endpoint.py.
//
//   node ocpp_rpc_charger.js ENDPOINT IDENTITY PROTOCOL METER_W
//   e.g. node ocpp_rpc_charger.js ws://127.0.0.1:9000/ocpp CPNODE ocpp1.6 7360
//
// It boots, reports its connector charging and one meter value of METER_W (Power.Active.Import),
// answers every SetChargingProfile Accepted, and prints one JSON line per event on stdout:
// {"event": "boot"|"SetChargingProfile"|"meter"|"error"|"closed", ...}.  It stops when its
// stdin closes (the test ends) or on SIGTERM.
'use strict';

const { RPCClient } = require('ocpp-rpc');

const [endpoint, identity, protocol, meterW] = process.argv.slice(2);
if (!endpoint || !identity || !['ocpp1.6', 'ocpp2.0.1'].includes(protocol)) {
    console.error('usage: node ocpp_rpc_charger.js ENDPOINT IDENTITY ocpp1.6|ocpp2.0.1 METER_W');
    process.exit(2);
}
const v16 = protocol === 'ocpp1.6';

function say(event, fields) {
    process.stdout.write(JSON.stringify({ event, t_ms: Date.now(), ...fields }) + '\n');
}

const client = new RPCClient({ endpoint, identity, protocols: [protocol], strictMode: true, reconnect: false,
                               callTimeoutMs: 10000 });

client.handle('SetChargingProfile', ({ params }) => {
    say('SetChargingProfile', { params });
    return { status: 'Accepted' };
});
client.handle(({ method }) => {
    say('unhandled', { method });
    const { createRPCError } = require('ocpp-rpc');
    throw createRPCError('NotImplemented', `${method} is not handled by this test charger`);
});
client.on('badMessage', ({ error }) => say('error', { where: 'badMessage', message: String(error && error.message) }));
client.on('close', ({ code, reason }) => {
    say('closed', { code, reason: String(reason || '') });
    process.exit(0);
});

async function main() {
    await client.connect();
    const now = () => new Date().toISOString();
    const boot = v16
        ? await client.call('BootNotification', { chargePointVendor: 'ocpp-rpc', chargePointModel: 'node-test' })
        : await client.call('BootNotification', { reason: 'PowerUp',
                                                  chargingStation: { vendorName: 'ocpp-rpc', model: 'node-test' } });
    say('boot', { boot, protocol: client.protocol });
    if (v16) {
        await client.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Charging',
                                                  timestamp: now() });
        await client.call('MeterValues', { connectorId: 1, meterValue: [{ timestamp: now(), sampledValue: [
            { value: String(meterW), measurand: 'Power.Active.Import', unit: 'W', context: 'Sample.Periodic' }] }] });
    } else {
        await client.call('StatusNotification', { timestamp: now(), connectorStatus: 'Occupied', evseId: 1,
                                                  connectorId: 1 });
        await client.call('MeterValues', { evseId: 1, meterValue: [{ timestamp: now(), sampledValue: [
            { value: Number(meterW), measurand: 'Power.Active.Import', unitOfMeasure: { unit: 'W' } }] }] });
    }
    say('meter', { w: Number(meterW) });
}

function stop() {
    client.close({ code: 1000, reason: 'test over' }).finally(() => process.exit(0));
}
process.stdin.on('end', stop);
process.stdin.resume();
process.on('SIGTERM', stop);

main().catch((err) => {
    say('error', { where: 'main', message: String(err && err.message), details: err && err.details });
    process.exit(1);
});
