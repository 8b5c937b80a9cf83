// A JavaScript guest that reads feature flags through the OpenFeature SDK
// and the unchanged OpenFeature OFREP provider (@openfeature/ofrep-provider,
// the one any Node service uses against flagd or another OFREP server). Its
// base URL is Seal's reserved flag authority, which the runtime answers in
// process: the provider's `fetch` becomes a wasi:http outgoing request that
// never leaves the host.
//
// scripts/build-foreign-guests bundles this file with its pinned npm
// dependencies (package.json, package-lock.json) by esbuild, then builds
// target/foreign-guests/flags-js.wasm with componentize-js.
//
// GET /?user=U&key=K answers JSON: the OpenFeature evaluation details of the
// string flag K (default "off") for targeting key U.

import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

OpenFeature.setProvider(new OFREPProvider({ baseUrl: 'http://flags.seal.internal' }));
const client = OpenFeature.getClient();

async function handle(request) {
  const url = new URL(request.url);
  const user = url.searchParams.get('user') ?? '';
  const key = url.searchParams.get('key') ?? 'greeting';
  const details = await client.getStringDetails(key, 'off', { targetingKey: user });
  const body = JSON.stringify({
    value: details.value,
    variant: details.variant ?? null,
    reason: details.reason ?? null,
    errorCode: details.errorCode ?? null,
  });
  return new Response(body, { status: 200, headers: { 'content-type': 'application/json' } });
}

addEventListener('fetch', (event) => {
  event.respondWith(
    handle(event.request).catch(
      (e) => new Response(`guest error: ${e}`, { status: 500, headers: { 'content-type': 'text/plain' } }),
    ),
  );
});
