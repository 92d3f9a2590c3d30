// Compiles every contracts/*.sol with solc-js (the version scripts/compile-contracts pins) and
// writes one artifact per contract to OUT_DIR/<Name>.json: {contractName, abi, bytecode,
// deployedBytecode, compiler}, the form alloy's `sol!` reads. The settings are fixed here
// (evmVersion pinned to what both revm and anvil run), so the output is reproducible: CI
// compiles again and fails on any difference from the committed artifacts.
//
//   NODE_PATH=<node_modules with solc> node contracts/compile.js OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const outDir = process.argv[2];
if (!outDir) { console.error('usage: compile.js OUT_DIR'); process.exit(2); }
const here = __dirname;
const sources = {};
for (const file of fs.readdirSync(here).filter((f) => f.endsWith('.sol')).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(here, file), 'utf8') };
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    evmVersion: 'cancun',
    optimizer: { enabled: true, runs: 200 },
    metadata: { bytecodeHash: 'none' },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);
fs.mkdirSync(outDir, { recursive: true });
for (const file of Object.keys(output.contracts).sort()) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    const artifact = {
      contractName: name,
      compiler: `solc ${solc.version()}`,
      abi: c.abi,
      bytecode: '0x' + c.evm.bytecode.object,
      deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    };
    fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + '\n');
  }
}
