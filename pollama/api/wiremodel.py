"""The base of the APIs' pydantic wire types (``WireModel``).

Each type builds its validator and serializer at its first use rather than when its
module is imported (pydantic's ``defer_build``): the server defines ~120 of them and a
request uses a handful, so building them all at import was ~35 ms of every start, while
a type's first request pays only its own build (a millisecond or two). Validation, its
error messages and the JSON written are the same either way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    model_config = ConfigDict(defer_build=True)
