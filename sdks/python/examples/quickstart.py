import os

from download_sdk import create_client, download, initiate, wait_for

client = create_client(os.environ["DOWNLOAD_API_URL"], os.environ["DOWNLOAD_API_KEY"])
job = initiate(client, [int(os.environ["SDK_FILE_ID"])])
status = wait_for(client, job)  # follows the job's SSE stream, falls back to polling
print(download(client, status, f"{status.job_id}.zip"))  # from the presigned URL, without the key
