from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.api_job_status import ApiJobStatus
from ..models.webhook_type import WebhookType
from ..types import UNSET, Unset

T = TypeVar("T", bound="DownloadWebhookBody")


@_attrs_define
class DownloadWebhookBody:
    """Body of the webhook sent when a job ends (or crosses a configured progress milestone).

    Attributes:
        job_id (str): The job.
        status (ApiJobStatus): Status of a job as clients see it.
        timestamp (datetime.datetime): When the job reached this state (ISO 8601 UTC).
        type_ (WebhookType): What a webhook says happened.
        download_url (str | Unset): Presigned URL of the result (completed jobs), valid for
            `PRESIGNED_URL_EXPIRY_SECONDS`.
        error (str | Unset): Why the job failed.
        error_code (str | Unset): Stable code of the failure.
        progress (int | Unset): Progress webhooks only: the job's progress when it crossed the milestone (at least the
            milestone, 1-99).
    """

    job_id: str
    status: ApiJobStatus
    timestamp: datetime.datetime
    type_: WebhookType
    download_url: str | Unset = UNSET
    error: str | Unset = UNSET
    error_code: str | Unset = UNSET
    progress: int | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        job_id = self.job_id

        status = self.status.value

        timestamp = self.timestamp.isoformat()

        type_ = self.type_.value

        download_url = self.download_url

        error = self.error

        error_code = self.error_code

        progress = self.progress

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "jobId": job_id,
                "status": status,
                "timestamp": timestamp,
                "type": type_,
            }
        )
        if download_url is not UNSET:
            field_dict["downloadUrl"] = download_url
        if error is not UNSET:
            field_dict["error"] = error
        if error_code is not UNSET:
            field_dict["errorCode"] = error_code
        if progress is not UNSET:
            field_dict["progress"] = progress

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        job_id = d.pop("jobId")

        status = ApiJobStatus(d.pop("status"))

        timestamp = datetime.datetime.fromisoformat(d.pop("timestamp"))

        type_ = WebhookType(d.pop("type"))

        download_url = d.pop("downloadUrl", UNSET)

        error = d.pop("error", UNSET)

        error_code = d.pop("errorCode", UNSET)

        progress = d.pop("progress", UNSET)

        download_webhook_body = cls(
            job_id=job_id,
            status=status,
            timestamp=timestamp,
            type_=type_,
            download_url=download_url,
            error=error,
            error_code=error_code,
            progress=progress,
        )

        download_webhook_body.additional_properties = d
        return download_webhook_body

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
