from enum import StrEnum


class WebhookType(StrEnum):
    DOWNLOAD_CANCELLED = "download.cancelled"
    DOWNLOAD_COMPLETED = "download.completed"
    DOWNLOAD_FAILED = "download.failed"
    DOWNLOAD_PROGRESS = "download.progress"

    def __str__(self) -> str:
        return str(self.value)
