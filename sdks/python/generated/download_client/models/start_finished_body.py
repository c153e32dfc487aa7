from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.start_status import StartStatus
from ..types import UNSET, Unset

T = TypeVar("T", bound="StartFinishedBody")


@_attrs_define
class StartFinishedBody:
    """`200` answer of the legacy `/start`, as the old service gave it.

    Attributes:
        file_id (int): The requested file id.
        message (str): Human-readable outcome.
        processing_time_ms (int): Time from acceptance to the end of the job.
        status (StartStatus): Legacy outcome status.
        download_url (None | str | Unset): Presigned URL when completed (`null` otherwise, as the old service answered).
        size (int | None | Unset): Size in bytes when completed (`null` otherwise).
    """

    file_id: int
    message: str
    processing_time_ms: int
    status: StartStatus
    download_url: None | str | Unset = UNSET
    size: int | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        file_id = self.file_id

        message = self.message

        processing_time_ms = self.processing_time_ms

        status = self.status.value

        download_url: None | str | Unset
        if isinstance(self.download_url, Unset):
            download_url = UNSET
        else:
            download_url = self.download_url

        size: int | None | Unset
        if isinstance(self.size, Unset):
            size = UNSET
        else:
            size = self.size

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "file_id": file_id,
                "message": message,
                "processingTimeMs": processing_time_ms,
                "status": status,
            }
        )
        if download_url is not UNSET:
            field_dict["downloadUrl"] = download_url
        if size is not UNSET:
            field_dict["size"] = size

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        file_id = d.pop("file_id")

        message = d.pop("message")

        processing_time_ms = d.pop("processingTimeMs")

        status = StartStatus(d.pop("status"))

        def _parse_download_url(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        download_url = _parse_download_url(d.pop("downloadUrl", UNSET))

        def _parse_size(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        size = _parse_size(d.pop("size", UNSET))

        start_finished_body = cls(
            file_id=file_id,
            message=message,
            processing_time_ms=processing_time_ms,
            status=status,
            download_url=download_url,
            size=size,
        )

        start_finished_body.additional_properties = d
        return start_finished_body

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
