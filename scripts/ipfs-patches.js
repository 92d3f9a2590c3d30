#!/usr/bin/env node
// Patches an installed js-ipfs 0.66.1 (npm `ipfs`) so that its Kubo RPC API answers the way Kubo
// does for what this project uses. Run by scripts/ipfs-node after `npm install`:
//
//   node scripts/ipfs-patches.js NODE_MODULES_DIR
//
// js-ipfs is unmaintained, so its files are edited in place. Every edit is idempotent (a file already
// patched is recognised and left alone) and fails loudly, exit 1 naming the file, when neither the text
// it must replace nor its own patched form is found: a silent no-op would bring back the very bugs the
// edit is for.
//
// 1. CIDs in answers (ipfs-http-server/src/api/resources/*.js and resources/files/*.js). js-ipfs prints
//    every CID with the `cid-base` query option, default base58btc: a CIDv1 comes out as `zb2…` where
//    Kubo prints base32 `bafk…`/`bafy…`, and a CIDv0 cannot be printed in any other base. So the default
//    becomes base32, and a CIDv0 is printed without a multibase encoder (plain `Qm…`), as Kubo does.
// 2. `Size` in the answer of /api/v0/add must be a string, as Kubo sends it: the Rust client
//    ipfs-api-backend-hyper (AddResponse.size: String) rejects a number. Only /add is changed: Kubo
//    sends a number for block/stat, ls and files/stat, and that client reads block/stat's Size as u64.
// 3. ipfs-core/src/block-storage.js asks bitswap for a block it does not have whenever bitswap reports
//    itself started, which it does even with `daemon --offline`; a `cat` of a CID that was never added
//    then waits forever for peers that cannot come. Bitswap is treated as never started, so a missing
//    block fails at once from the local blockstore.
'use strict'

const fs = require('fs')
const path = require('path')

const modules = process.argv[2]
if (!modules || !fs.existsSync(path.join(modules, 'ipfs-http-server'))) {
  console.error(`ipfs-patches: usage: ipfs-patches.js NODE_MODULES_DIR (no ipfs-http-server in ${modules})`)
  process.exit(2)
}

const failures = []
const fail = (file, what) => failures.push(`${path.relative(modules, file)}: ${what}`)

// Edits one file with `edit(text) -> text`, writing only when something changed.
function patchFile (file, edit) {
  const before = fs.readFileSync(file, 'utf8')
  const after = edit(before, file)
  if (after !== before) fs.writeFileSync(file, after)
}

// --- 1 and 2: the HTTP API resources -------------------------------------------------------------
const resources = path.join(modules, 'ipfs-http-server', 'src', 'api', 'resources')
const resourceFiles = [
  ...fs.readdirSync(resources).filter(f => f.endsWith('.js')).map(f => path.join(resources, f)),
  ...fs.readdirSync(path.join(resources, 'files')).filter(f => f.endsWith('.js')).map(f => path.join(resources, 'files', f))
]

// `X.toString(base.encoder)` where X is a CID expression such as `cid`, `file.cid`, `stats.cid`.
const TO_STRING = /([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\.toString\(base\.encoder\)/g
const TO_STRING_PATCHED = /\.toString\([\w$.]+\.version === 0 \? undefined : base\.encoder\)/
const DEFAULT_B58 = /(cidBase: Joi\.string\(\)\.default\()'base58btc'\)/g
const DEFAULT_B32 = /cidBase: Joi\.string\(\)\.default\('base32'\)/

// The files whose answers this project reads; each must end up patched, the others are patched
// where they have the same code.
const required = new Set(['files-regular.js', 'pin.js', 'block.js'].map(f => path.join(resources, f)))
let cidFiles = 0

for (const file of resourceFiles) {
  patchFile(file, text => {
    const printsCids = TO_STRING.test(text) || TO_STRING_PATCHED.test(text)
    TO_STRING.lastIndex = 0
    if (!printsCids) {
      if (required.has(file)) fail(file, 'no `CID.toString(base.encoder)` to patch')
      return text
    }
    cidFiles++
    // Only files that print CIDs themselves get the base32 default: others (resolve.js) hand
    // cidBase to ipfs-core, which would then fail to print a CIDv0 in base32.
    text = text.replace(TO_STRING, (_, cid) => `${cid}.toString(${cid}.version === 0 ? undefined : base.encoder)`)
    text = text.replace(DEFAULT_B58, "$1'base32')")
    if (!DEFAULT_B32.test(text)) fail(file, "no `cidBase: Joi.string().default('base58btc')` to patch")
    return text
  })
}
if (cidFiles === 0) fail(resources, 'no resource prints CIDs with base.encoder')

patchFile(path.join(resources, 'files-regular.js'), (text, file) => {
  const original = 'Hash: file.cid.toString(file.cid.version === 0 ? undefined : base.encoder),\n                  Size: file.size,'
  const patched = 'Hash: file.cid.toString(file.cid.version === 0 ? undefined : base.encoder),\n                  Size: String(file.size),'
  if (text.includes(patched)) return text
  if (!text.includes(original)) {
    fail(file, 'no `Size: file.size,` after the Hash of /add to patch')
    return text
  }
  return text.replace(original, patched)
})

// --- 3: bitswap in the block storage -------------------------------------------------------------
patchFile(path.join(modules, 'ipfs-core', 'src', 'block-storage.js'), (text, file) => {
  const original = 'this.bitswap.isStarted()'
  const patched = 'false /* patched by ipfs-patches.js: bitswap never started */'
  const count = text.split(original).length - 1
  if (count === 0 && text.includes(patched)) return text
  if (count !== 4) {
    fail(file, `expected 4 \`${original}\` (put, putMany, get, getMany), found ${count}`)
    return text
  }
  return text.split(original).join(patched)
})

if (failures.length) {
  console.error('ipfs-patches: FAILED, the installed js-ipfs is not the one these patches were written for:')
  for (const f of failures) console.error(`  ${f}`)
  process.exit(1)
}
