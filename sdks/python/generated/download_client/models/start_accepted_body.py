from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.api_job_status import ApiJobStatus

T = TypeVar("T", bound="StartAcceptedBody")


@_attrs_define
class StartAcceptedBody:
    """`202` answer of the legacy `/start` when the job outlasts the wait.

    Attributes:
        file_id (int): The requested file id.
        job_id (str): The job's id.
        message (str): Human-readable hint.
        status (ApiJobStatus): Status of a job as clients see it.
        status_url (str): Where to poll.
        stream_url (str): Where to follow progress.
    """

    file_id: int
    job_id: str
    message: str
    status: ApiJobStatus
    status_url: str
    stream_url: str
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        file_id = self.file_id

        job_id = self.job_id

        message = self.message

        status = self.status.value

        status_url = self.status_url

        stream_url = self.stream_url

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "file_id": file_id,
                "jobId": job_id,
                "message": message,
                "status": status,
                "statusUrl": status_url,
                "streamUrl": stream_url,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        file_id = d.pop("file_id")

        job_id = d.pop("jobId")

        message = d.pop("message")

        status = ApiJobStatus(d.pop("status"))

        status_url = d.pop("statusUrl")

        stream_url = d.pop("streamUrl")

        start_accepted_body = cls(
            file_id=file_id,
            job_id=job_id,
            message=message,
            status=status,
            status_url=status_url,
            stream_url=stream_url,
        )

        start_accepted_body.additional_properties = d
        return start_accepted_body

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
