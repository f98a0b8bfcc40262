"""Evolution API v2 compatibility facade (issue 20, docs/evolution.md).

Evolution's REST shape — ``apikey`` header, ``/instance/...``, ``/message/...``,
``/chat/...``, ``/group/...``, ``/settings/...`` — mapped onto zapfleet's services
(control_plane/{sessions,messages,media,contacts,groups,numbers}.py): a client written
for Evolution changes only its base URL and key. It is a facade, not a second
implementation: every route calls a service and re-shapes its answer and its errors.

Mounted by control_plane/app.py when ``ZAPFLEET_EVOLUTION`` is on, under
``ZAPFLEET_EVOLUTION_PREFIX`` (default: Evolution's own root paths), outside the OpenAPI
document. One module per Evolution controller family; ``router.evolution_router`` joins
them. This package's top stays import-free: the webhook dispatcher imports
``events`` (the payload format) without the routes.
"""
