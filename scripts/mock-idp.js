#!/usr/bin/env node
// A stand-in for an external OpenID Connect / OAuth 2 identity provider, for the tests that check
// the FHIR server accepts tokens from a trusted external issuer (verified against its JWKS) and
// refuses them from an untrusted one. Built on npm `oauth2-mock-server` 8.2.3 (ESM only; found
// through NODE_PATH, which scripts/mock-idp sets to its install in $INTELLIHEALTH_CACHE/mock-idp).
//
//   node scripts/mock-idp.js --audience URL [--port N] [--scope S] [--patient ID] [--fhir-user REF]
//
//   --audience URL   `aud` of every access token (a string): the FHIR base URL of the server under
//                    test, e.g. http://127.0.0.1:8080/fhir (required)
//   --port N         port on 127.0.0.1; 0 or absent = a free port chosen by the kernel
//   --scope S        default `scope` claim (space-separated SMART scopes), e.g. 'system/*.read'
//   --patient ID     default `patient` claim (a FHIR Patient id)
//   --fhir-user REF  default `fhirUser` claim, e.g. Patient/123
//   (each flag may also come from the environment: MOCK_IDP_AUDIENCE, MOCK_IDP_PORT,
//    MOCK_IDP_SCOPE, MOCK_IDP_PATIENT, MOCK_IDP_FHIR_USER; a flag wins over the environment)
//
// Once listening it prints exactly one line on stdout, `mock-idp listening on http://127.0.0.1:PORT`;
// that URL is the tokens' `iss` and the discovery document's `issuer` (no trailing slash). Everything
// else (one line per token issued, errors) goes to stderr.
//
// Endpoints (the library's): GET /.well-known/openid-configuration, GET /jwks, POST /token
// (form-encoded; grant_type=client_credentials with any client_id/client_secret, or none), plus
// /authorize, /userinfo, /revoke, /introspect, /endsession.
//
// Access tokens are RS256 JWTs signed by one RSA key generated at start (lost at exit), with
// header {alg, kid, typ: "JWT"} and claims iss, iat, nbf (= iat - 10), exp (= iat + 3600), aud,
// scope, patient, fhirUser, and for client_credentials sub = client_id = the request's client id.
// A token request may override the defaults with the form fields `scope`, `patient`, `fhirUser`
// and `aud` (repeat `aud` for an array); a field sent empty (`patient=`) leaves that claim out.
'use strict'

const { randomBytes } = require('crypto')
const { pathToFileURL } = require('url')

// --- configuration -----------------------------------------------------------------------------
function parseArgs (argv) {
  const flags = { '--port': 'port', '--audience': 'audience', '--scope': 'scope', '--patient': 'patient', '--fhir-user': 'fhirUser' }
  const opts = {
    port: process.env.MOCK_IDP_PORT ?? '0',
    audience: process.env.MOCK_IDP_AUDIENCE,
    scope: process.env.MOCK_IDP_SCOPE,
    patient: process.env.MOCK_IDP_PATIENT,
    fhirUser: process.env.MOCK_IDP_FHIR_USER
  }
  for (let i = 0; i < argv.length; i += 2) {
    let [flag, value] = [argv[i], argv[i + 1]]
    const eq = flag.indexOf('=') // --flag=value works too
    if (flag.startsWith('--') && eq > 0) { [flag, value] = [flag.slice(0, eq), flag.slice(eq + 1)]; i-- }
    if (!(flag in flags) || value === undefined) usage(`bad argument '${flag}'`)
    opts[flags[flag]] = value
  }
  if (!/^\d+$/.test(opts.port) || Number(opts.port) > 65535) usage(`--port must be 0..65535, got '${opts.port}'`)
  if (!opts.audience) usage('--audience is required')
  opts.port = Number(opts.port)
  return opts
}

function usage (problem) {
  console.error(`mock-idp: ${problem}`)
  console.error('usage: mock-idp.js --audience URL [--port N] [--scope S] [--patient ID] [--fhir-user REF]')
  process.exit(2)
}

// A claim's value: the form field when the request has it (empty = leave the claim out), else the default.
function pick (body, field, fallback) {
  const value = body !== undefined && field in body ? body[field] : fallback
  return value === '' ? undefined : value
}

// The client id of a token request: HTTP Basic user, else the form's client_id.
function clientId (req) {
  const auth = req.headers.authorization
  if (auth && /^basic /i.test(auth)) {
    const user = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8').split(':')[0]
    return decodeURIComponent(user)
  }
  return req.body?.client_id
}

// --- server ------------------------------------------------------------------------------------
async function main () {
  const opts = parseArgs(process.argv.slice(2))
  // The package is ESM only: resolve it the CommonJS way (honouring NODE_PATH), then import it.
  const { OAuth2Server } = await import(pathToFileURL(require.resolve('oauth2-mock-server')).href)

  const server = new OAuth2Server()
  // One RSA key, RS256. Its JWKS entry gets `use: "sig"` (the library's generate() leaves `use` out).
  const kid = `mock-idp-${randomBytes(8).toString('hex')}`
  const jwk = await server.issuer.keys.generate('RS256', { kid })
  jwk.use = 'sig' // generate() stores and returns this same object, so the JWKS shows it

  // The library builds the access token first and, for grants other than client_credentials, an
  // id_token next, through the same event: only the first token of each request is customised.
  const customised = new WeakSet()
  server.service.on('beforeTokenSigning', (token, req) => {
    if (customised.has(req)) return
    customised.add(req)
    const body = req.body
    const claims = {
      aud: pick(body, 'aud', opts.audience),
      scope: pick(body, 'scope', opts.scope),
      patient: pick(body, 'patient', opts.patient),
      fhirUser: pick(body, 'fhirUser', opts.fhirUser)
    }
    if (body?.grant_type === 'client_credentials') {
      const id = clientId(req)
      if (id) Object.assign(claims, { sub: id, client_id: id }) // as RFC 9068 has it
    }
    for (const [name, value] of Object.entries(claims)) {
      if (value === undefined) delete token.payload[name]
      else token.payload[name] = value
    }
    console.error(`mock-idp: token for ${body?.grant_type}: ${JSON.stringify(token.payload)}`)
  })
  // The token response's `scope` is the request's by default: make it the token's.
  server.service.on('beforeResponse', (response, req) => {
    if (response.statusCode !== 200 || typeof response.body !== 'object') return
    const scope = pick(req.body, 'scope', opts.scope)
    if (scope === undefined) delete response.body.scope
    else response.body.scope = scope
  })

  await server.start(opts.port, '127.0.0.1')
  // The library would name a 127.0.0.1 listener `http://localhost:PORT`; the issuer must be the
  // address the FHIR server is told to trust, so it is set explicitly (no trailing slash).
  const issuer = `http://127.0.0.1:${server.address().port}`
  server.issuer.url = issuer
  process.stdout.write(`mock-idp listening on ${issuer}\n`)

  const stop = async (signal) => {
    console.error(`mock-idp: ${signal}, stopping`)
    try { await server.stop() } finally { process.exit(0) }
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

main().catch((err) => {
  console.error(`mock-idp: ${err.stack || err}`)
  process.exit(1)
})
