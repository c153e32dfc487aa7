from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.api_job_status import ApiJobStatus

T = TypeVar("T", bound="InitiateBody")


@_attrs_define
class InitiateBody:
    """`202` answer of `POST /v1/download/initiate`.

    Attributes:
        estimated_time (int): Expected duration in seconds, from recent jobs when known.
        job_id (str): The new job's id.
        status (ApiJobStatus): Status of a job as clients see it.
        status_url (str): Where to poll the job's status.
        stream_url (str): Where to follow the job's progress as Server-Sent Events; its token opens this job's
            stream for `STREAM_TOKEN_TTL_SECONDS` (the status carries a fresh one).
        total_file_ids (int): Number of distinct file ids in the job.
    """

    estimated_time: int
    job_id: str
    status: ApiJobStatus
    status_url: str
    stream_url: str
    total_file_ids: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        estimated_time = self.estimated_time

        job_id = self.job_id

        status = self.status.value

        status_url = self.status_url

        stream_url = self.stream_url

        total_file_ids = self.total_file_ids

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "estimatedTime": estimated_time,
                "jobId": job_id,
                "status": status,
                "statusUrl": status_url,
                "streamUrl": stream_url,
                "totalFileIds": total_file_ids,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        estimated_time = d.pop("estimatedTime")

        job_id = d.pop("jobId")

        status = ApiJobStatus(d.pop("status"))

        status_url = d.pop("statusUrl")

        stream_url = d.pop("streamUrl")

        total_file_ids = d.pop("totalFileIds")

        initiate_body = cls(
            estimated_time=estimated_time,
            job_id=job_id,
            status=status,
            status_url=status_url,
            stream_url=stream_url,
            total_file_ids=total_file_ids,
        )

        initiate_body.additional_properties = d
        return initiate_body

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
