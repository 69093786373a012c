// Decodes HEP packets with hep-js, an independent HEP decoder (sipcapture/hep-js on npm),
// for tests/hepjs_interop.rs.
//
// stdin: one packet per line, as hex. stdout: one JSON object per line, in input order:
//   {"ok": true, "rcinfo": {...}, "payload": "..."}  what hep-js decapsulate() returned
//   {"ok": false}                                    hep-js returned false/undefined
//   {"ok": false, "error": "..."}                    the line was not hex
//
// hep-js 1.0.22 decodes (index.js, hepDecode): 0x01 protocolFamily, 0x02 protocol,
// 0x03/0x04 srcIp/dstIp (IPv4 only), 0x07/0x08 srcPort/dstPort, 0x09 timeSeconds,
// 0x0a timeUseconds, 0x0b payloadType, 0x0c captureId, 0x0e capturePass (string),
// 0x0f payload (string), 0x11 correlation_id (string), 0x13 hepNodeName (string),
// 0x20 mos (uint16), 0x24 transaction_type (read as uint16!), and vendor chunks registered
// with addVendorExtensions. It matches on the type only, never the vendor, and a later
// chunk of a type overwrites an earlier one.
'use strict';

const readline = require('readline');
const hepjs = require('hep-js');

// Vendor chunks the test encodes, decoded through hep-js' extension mechanism.
hepjs.addVendorExtensions({
  3: {
    0x0101: { keyName: 'opensipsExtra' }, // string
    0x0102: { keyName: 'opensipsCounter', type: 'UInt32' }, // read with readUInt32BE
  },
  8: {
    0x0201: { keyName: 'genesysConversationId' },
  },
});

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  const hex = line.trim();
  let out;
  if (!/^([0-9a-fA-F]{2})*$/.test(hex)) {
    out = { ok: false, error: 'not hex' };
  } else {
    const decoded = hepjs.decapsulate(Buffer.from(hex, 'hex'));
    if (decoded) {
      out = { ok: true, ...decoded };
    } else {
      out = { ok: false };
    }
  }
  process.stdout.write(
    JSON.stringify(out, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n',
  );
});
