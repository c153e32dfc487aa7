from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.api_job_status import ApiJobStatus
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.file_body import FileBody


T = TypeVar("T", bound="JobStatusBody")


@_attrs_define
class JobStatusBody:
    """A job's status.

    Attributes:
        attempt (int): Processing attempts so far.
        created_at (datetime.datetime): When the job was accepted (ISO 8601 UTC).
        files (list[FileBody]): Availability of each requested file (once checked).
        job_id (str): Job id.
        progress (int): 0-100.
        status (ApiJobStatus): Status of a job as clients see it.
        stream_url (str): Where to follow the job's progress as Server-Sent Events: a fresh URL whose token opens
            this job's stream for `STREAM_TOKEN_TTL_SECONDS` (ask again for a new one when it expires).
        completed_at (datetime.datetime | Unset): When the job ended.
        download_url (str | Unset): A presigned URL of the result with at least 95 % of its lifetime left, only when
            completed.
        error (str | Unset): Why the job failed (or why it is waiting for a retry).
        error_code (str | Unset): Stable code of `error`.
        estimated_completion (datetime.datetime | Unset): Best guess of when it will end, while not ended.
        started_at (datetime.datetime | Unset): When processing started.
    """

    attempt: int
    created_at: datetime.datetime
    files: list[FileBody]
    job_id: str
    progress: int
    status: ApiJobStatus
    stream_url: str
    completed_at: datetime.datetime | Unset = UNSET
    download_url: str | Unset = UNSET
    error: str | Unset = UNSET
    error_code: str | Unset = UNSET
    estimated_completion: datetime.datetime | Unset = UNSET
    started_at: datetime.datetime | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        attempt = self.attempt

        created_at = self.created_at.isoformat()

        files = []
        for files_item_data in self.files:
            files_item = files_item_data.to_dict()
            files.append(files_item)

        job_id = self.job_id

        progress = self.progress

        status = self.status.value

        stream_url = self.stream_url

        completed_at: str | Unset = UNSET
        if not isinstance(self.completed_at, Unset):
            completed_at = self.completed_at.isoformat()

        download_url = self.download_url

        error = self.error

        error_code = self.error_code

        estimated_completion: str | Unset = UNSET
        if not isinstance(self.estimated_completion, Unset):
            estimated_completion = self.estimated_completion.isoformat()

        started_at: str | Unset = UNSET
        if not isinstance(self.started_at, Unset):
            started_at = self.started_at.isoformat()

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "attempt": attempt,
                "createdAt": created_at,
                "files": files,
                "jobId": job_id,
                "progress": progress,
                "status": status,
                "streamUrl": stream_url,
            }
        )
        if completed_at is not UNSET:
            field_dict["completedAt"] = completed_at
        if download_url is not UNSET:
            field_dict["downloadUrl"] = download_url
        if error is not UNSET:
            field_dict["error"] = error
        if error_code is not UNSET:
            field_dict["errorCode"] = error_code
        if estimated_completion is not UNSET:
            field_dict["estimatedCompletion"] = estimated_completion
        if started_at is not UNSET:
            field_dict["startedAt"] = started_at

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.file_body import FileBody  # noqa: PLC0415

        d = dict(src_dict)
        attempt = d.pop("attempt")

        created_at = datetime.datetime.fromisoformat(d.pop("createdAt"))

        files = []
        _files = d.pop("files")
        for files_item_data in _files:
            files_item = FileBody.from_dict(files_item_data)

            files.append(files_item)

        job_id = d.pop("jobId")

        progress = d.pop("progress")

        status = ApiJobStatus(d.pop("status"))

        stream_url = d.pop("streamUrl")

        _completed_at = d.pop("completedAt", UNSET)
        completed_at: datetime.datetime | Unset
        if isinstance(_completed_at, Unset):
            completed_at = UNSET
        else:
            completed_at = datetime.datetime.fromisoformat(_completed_at)

        download_url = d.pop("downloadUrl", UNSET)

        error = d.pop("error", UNSET)

        error_code = d.pop("errorCode", UNSET)

        _estimated_completion = d.pop("estimatedCompletion", UNSET)
        estimated_completion: datetime.datetime | Unset
        if isinstance(_estimated_completion, Unset):
            estimated_completion = UNSET
        else:
            estimated_completion = datetime.datetime.fromisoformat(_estimated_completion)

        _started_at = d.pop("startedAt", UNSET)
        started_at: datetime.datetime | Unset
        if isinstance(_started_at, Unset):
            started_at = UNSET
        else:
            started_at = datetime.datetime.fromisoformat(_started_at)

        job_status_body = cls(
            attempt=attempt,
            created_at=created_at,
            files=files,
            job_id=job_id,
            progress=progress,
            status=status,
            stream_url=stream_url,
            completed_at=completed_at,
            download_url=download_url,
            error=error,
            error_code=error_code,
            estimated_completion=estimated_completion,
            started_at=started_at,
        )

        job_status_body.additional_properties = d
        return job_status_body

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
