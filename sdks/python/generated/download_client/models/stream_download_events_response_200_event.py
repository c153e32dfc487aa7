from enum import StrEnum


class StreamDownloadEventsResponse200Event(StrEnum):
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"
    PROGRESS = "progress"

    def __str__(self) -> str:
        return str(self.value)
