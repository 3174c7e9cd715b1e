"""Ordered conversation edits and lookups for the client ``conversation.item.*`` events."""

from __future__ import annotations

from typing import Any

from .errors import ClientEventError


def _index_of(conversation: list[dict[str, Any]], item_id: str) -> int | None:
    for index, item in enumerate(conversation):
        if item.get("id") == item_id:
            return index
    return None


def insert_item(
    conversation: list[dict[str, Any]], item: dict[str, Any], previous_item_id: Any
) -> str | None:
    """Insert ``item`` after ``previous_item_id`` and return the id of the item before it.

    ``None`` appends, ``"root"`` inserts first (the API's conventions).

    Raises:
        ClientEventError: ``duplicate_item_id`` when the id is taken ([inferred] code),
            ``item_not_found`` when ``previous_item_id`` names no item.
    """
    if _index_of(conversation, item["id"]) is not None:
        raise ClientEventError(
            "duplicate_item_id", f"Item with id '{item['id']}' already exists.", param="item.id"
        )
    if previous_item_id is None:
        position = len(conversation)
    elif previous_item_id == "root":
        position = 0
    elif (
        isinstance(previous_item_id, str)
        and (found := _index_of(conversation, previous_item_id)) is not None
    ):
        position = found + 1
    else:
        raise ClientEventError(
            "item_not_found",
            f"Previous item with id '{previous_item_id}' does not exist.",
            param="previous_item_id",
        )
    conversation.insert(position, item)
    return conversation[position - 1]["id"] if position > 0 else None


def delete_item(conversation: list[dict[str, Any]], item_id: Any) -> str:
    """Remove the item with ``item_id`` and return the id.

    Raises:
        ClientEventError: ``item_not_found``.
    """
    index = _index_of(conversation, item_id) if isinstance(item_id, str) else None
    if index is None or not isinstance(item_id, str):
        raise ClientEventError(
            "item_not_found", f"Item with id '{item_id}' not found.", param="item_id"
        )
    del conversation[index]
    return item_id


def find_item(conversation: list[dict[str, Any]], item_id: Any) -> dict[str, Any]:
    """Return the item with ``item_id`` (the stored dict itself, for in-place edits).

    Raises:
        ClientEventError: ``item_not_found``.
    """
    index = _index_of(conversation, item_id) if isinstance(item_id, str) else None
    if index is None:
        raise ClientEventError(
            "item_not_found", f"Item with id '{item_id}' not found.", param="item_id"
        )
    return conversation[index]
