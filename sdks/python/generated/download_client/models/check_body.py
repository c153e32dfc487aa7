from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

T = TypeVar("T", bound="CheckBody")


@_attrs_define
class CheckBody:
    """`POST /v1/download/check` answer (legacy contract).

    Attributes:
        available (bool): Whether the file exists.
        file_id (int): The file id asked about.
        s_3_key (None | str | Unset): Its S3 key, when available (`null` otherwise, as the old service answered).
        size (int | None | Unset): Its size in bytes, when available (`null` otherwise).
    """

    available: bool
    file_id: int
    s_3_key: None | str | Unset = UNSET
    size: int | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        available = self.available

        file_id = self.file_id

        s_3_key: None | str | Unset
        if isinstance(self.s_3_key, Unset):
            s_3_key = UNSET
        else:
            s_3_key = self.s_3_key

        size: int | None | Unset
        if isinstance(self.size, Unset):
            size = UNSET
        else:
            size = self.size

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "available": available,
                "file_id": file_id,
            }
        )
        if s_3_key is not UNSET:
            field_dict["s3Key"] = s_3_key
        if size is not UNSET:
            field_dict["size"] = size

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        available = d.pop("available")

        file_id = d.pop("file_id")

        def _parse_s_3_key(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        s_3_key = _parse_s_3_key(d.pop("s3Key", UNSET))

        def _parse_size(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        size = _parse_size(d.pop("size", UNSET))

        check_body = cls(
            available=available,
            file_id=file_id,
            s_3_key=s_3_key,
            size=size,
        )

        check_body.additional_properties = d
        return check_body

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
