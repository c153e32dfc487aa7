from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.api_job_status import ApiJobStatus
from ..types import UNSET, Unset

T = TypeVar("T", bound="StreamEventData")


@_attrs_define
class StreamEventData:
    """The JSON `data` of one stream event. The event's name is `progress` (while queued or
    processing), `completed`, `failed` or `cancelled`; its `id` is `seq`.

        Attributes:
            at (datetime.datetime): When the change happened (ISO 8601 UTC).
            attempt (int): Processing attempt.
            job_id (str): The job.
            progress (int): 0-100.
            seq (int): The job's event number (also the event's `id`), from 1, without gaps; 0 when a stream
                opens on a job so new that its first event is not out yet (its current state).
            status (ApiJobStatus): Status of a job as clients see it.
            download_url (str | Unset): `completed` only: a presigned URL of the result with at least 95 % of its lifetime
                left (absent if the presigner was
                unavailable; `GET /v1/download/{jobId}` then mints one).
            error (str | Unset): `failed` only: why.
            error_code (str | Unset): `failed` only: stable code of `error`.
    """

    at: datetime.datetime
    attempt: int
    job_id: str
    progress: int
    seq: int
    status: ApiJobStatus
    download_url: str | Unset = UNSET
    error: str | Unset = UNSET
    error_code: str | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        at = self.at.isoformat()

        attempt = self.attempt

        job_id = self.job_id

        progress = self.progress

        seq = self.seq

        status = self.status.value

        download_url = self.download_url

        error = self.error

        error_code = self.error_code

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "at": at,
                "attempt": attempt,
                "jobId": job_id,
                "progress": progress,
                "seq": seq,
                "status": status,
            }
        )
        if download_url is not UNSET:
            field_dict["downloadUrl"] = download_url
        if error is not UNSET:
            field_dict["error"] = error
        if error_code is not UNSET:
            field_dict["errorCode"] = error_code

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        at = datetime.datetime.fromisoformat(d.pop("at"))

        attempt = d.pop("attempt")

        job_id = d.pop("jobId")

        progress = d.pop("progress")

        seq = d.pop("seq")

        status = ApiJobStatus(d.pop("status"))

        download_url = d.pop("downloadUrl", UNSET)

        error = d.pop("error", UNSET)

        error_code = d.pop("errorCode", UNSET)

        stream_event_data = cls(
            at=at,
            attempt=attempt,
            job_id=job_id,
            progress=progress,
            seq=seq,
            status=status,
            download_url=download_url,
            error=error,
            error_code=error_code,
        )

        stream_event_data.additional_properties = d
        return stream_event_data

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
