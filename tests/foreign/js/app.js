// A wasi:http/incoming-handler guest for Seal, built with jco/componentize-js
// (StarlingMonkey). StarlingMonkey implements the exported
// wasi:http/incoming-handler by dispatching a service-worker style `fetch`
// event, so the app only registers a listener.
//
// Build with scripts/build-foreign-guests, which runs (from this directory)
//   componentize-js app.js --wit target/foreign-guests/wit-js \
//       --world-name http-guest -o target/foreign-guests/hello-js.wasm
// where wit-js is tests/foreign/wit re-versioned to wasi 0.2.10, the exact
// incoming-handler version StarlingMonkey (componentize-js 0.23.0) exports.
//
// Answers every request with 200 text/plain
// `Hello from JavaScript! path=<path_with_query>`.

addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  const path = url.pathname + url.search;
  event.respondWith(
    new Response(`Hello from JavaScript! path=${path}`, {
      status: 200,
      headers: { 'content-type': 'text/plain' },
    }),
  );
});
