import { DownloadClient } from 'download-service-sdk';

const client = new DownloadClient({ baseUrl: process.env.DOWNLOAD_API_URL!, apiKey: process.env.DOWNLOAD_API_KEY! });
const job = await client.initiate([Number(process.env.SDK_FILE_ID)]);
const finished = await client.waitFor(job); // follows the job's event stream, polls if it must
const bytes = await client.download(finished);
console.log(`job ${finished.jobId} ${finished.status}: ${bytes.length} bytes`);
