"""Contains all the data models used in inputs/outputs"""

from .api_job_status import ApiJobStatus
from .cancel_body import CancelBody
from .check_body import CheckBody
from .check_request import CheckRequest
from .check_state import CheckState
from .download_webhook_body import DownloadWebhookBody
from .file_body import FileBody
from .health_body import HealthBody
from .health_checks import HealthChecks
from .health_state import HealthState
from .initiate_body import InitiateBody
from .initiate_request import InitiateRequest
from .job_status_body import JobStatusBody
from .problem import Problem
from .root_body import RootBody
from .start_accepted_body import StartAcceptedBody
from .start_finished_body import StartFinishedBody
from .start_request import StartRequest
from .start_status import StartStatus
from .stream_download_events_response_200 import StreamDownloadEventsResponse200
from .stream_download_events_response_200_event import StreamDownloadEventsResponse200Event
from .stream_event_data import StreamEventData
from .webhook_type import WebhookType

__all__ = (
    "ApiJobStatus",
    "CancelBody",
    "CheckBody",
    "CheckRequest",
    "CheckState",
    "DownloadWebhookBody",
    "FileBody",
    "HealthBody",
    "HealthChecks",
    "HealthState",
    "InitiateBody",
    "InitiateRequest",
    "JobStatusBody",
    "Problem",
    "RootBody",
    "StartAcceptedBody",
    "StartFinishedBody",
    "StartRequest",
    "StartStatus",
    "StreamDownloadEventsResponse200",
    "StreamDownloadEventsResponse200Event",
    "StreamEventData",
    "WebhookType",
)
