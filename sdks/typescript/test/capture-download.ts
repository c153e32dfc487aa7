/**
 * Preloaded into the quickstart example by the live test (`node --import`), so the test can
 * compare the bytes the quickstart downloaded without the example having to print or save them.
 *
 * It wraps the global `fetch` (which `DownloadClient` uses by default) and writes the body of
 * every successful answer that is not the API's own (`DOWNLOAD_API_URL` + `/v1/...`), that is
 * the result fetched from its presigned URL, to `SDK_CAPTURE_DOWNLOAD_PATH`. Without that
 * variable it does nothing.
 */
import { writeFileSync } from 'node:fs';

const target = process.env.SDK_CAPTURE_DOWNLOAD_PATH;
const apiUrl = process.env.DOWNLOAD_API_URL;

if (target && apiUrl) {
  const apiPrefix = `${apiUrl.replace(/\/+$/, '')}/v1/`;
  const inner = globalThis.fetch;
  globalThis.fetch = async (input, init) => {
    const response = await inner(input, init);
    const url = input instanceof Request ? input.url : input.toString();
    if (response.ok && !new URL(url).href.startsWith(apiPrefix)) {
      // A copy of the body; the original stays unread for the caller.
      writeFileSync(target, new Uint8Array(await response.clone().arrayBuffer()));
    }
    return response;
  };
}
