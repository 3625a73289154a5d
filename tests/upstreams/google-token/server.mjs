// A token endpoint as strict as Google's documentation of service-account
// keys (https://developers.google.com/identity/protocols/oauth2/service-account#httprest):
// the JWT bearer grant only; the assertion RS256, signed by the key whose
// public half is PUBLIC_KEY and whose id is KID; iss the service account's
// email (ISSUER); aud this endpoint's URL; iat within five minutes of now and
// exp at most an hour after iat; a `scope` claim. Its answers and errors as
// Google's. Env: PUBLIC_KEY, KID, ISSUER, PORT (0: any). Prints
// `listening on 127.0.0.1:PORT`.
import '../ignore-sigusr1.mjs';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createPublicKey, randomBytes } from 'node:crypto';
import { jwtVerify, decodeProtectedHeader, decodeJwt } from 'jose';

const key = createPublicKey(readFileSync(process.env.PUBLIC_KEY));
const server = createServer((req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', async () => {
    const answer = (status, json) => {
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(json));
    };
    const form = new URLSearchParams(body);
    const port = server.address().port;
    if (req.method !== 'POST' || req.url !== '/token') return answer(404, { error: 'not_found' });
    if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
      return answer(400, { error: 'unsupported_grant_type', error_description: `Invalid grant_type: ${form.get('grant_type')}` });
    }
    const assertion = form.get('assertion') || '';
    let header; let claims;
    try { header = decodeProtectedHeader(assertion); claims = decodeJwt(assertion); } catch {
      return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT: not a JWT.' });
    }
    if (header.alg !== 'RS256' || header.kid !== process.env.KID) {
      return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT Signature.' });
    }
    try {
      await jwtVerify(assertion, key, { algorithms: ['RS256'] });
    } catch {
      return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT Signature.' });
    }
    const now = Math.floor(Date.now() / 1000);
    if (typeof claims.iat !== 'number' || typeof claims.exp !== 'number' || Math.abs(claims.iat - now) > 300
        || claims.exp <= now || claims.exp - claims.iat > 3600) {
      return answer(400, { error: 'invalid_grant', error_description: 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.' });
    }
    if (claims.aud !== `http://127.0.0.1:${port}/token`) {
      return answer(400, { error: 'invalid_grant', error_description: `Invalid JWT: Failed audience check. The right audience is http://127.0.0.1:${port}/token` });
    }
    if (claims.iss !== process.env.ISSUER) {
      return answer(400, { error: 'invalid_grant', error_description: 'Invalid grant: account not found' });
    }
    if (typeof claims.scope !== 'string' || !claims.scope.trim()) {
      return answer(400, { error: 'invalid_scope', error_description: 'Invalid OAuth scope or ID token audience provided.' });
    }
    console.log(`issued scope=${claims.scope}`);
    return answer(200, { access_token: `ya29.${randomBytes(24).toString('base64url')}`, expires_in: 3599, token_type: 'Bearer' });
  });
});
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
