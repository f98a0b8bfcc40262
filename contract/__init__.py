"""What crosses NATS between the control plane and the node agents — the contract both
sides import, and nothing else crosses (tests/test_layers.py holds the import graph to it):

- :mod:`contract.protocol` — the wire structs, operations, error codes, subjects, bucket
  and stream names, events;
- :mod:`contract.event_data` — the typed ``data`` of every event type;
- :mod:`contract.chat_ids` — the value rules both sides apply (phone numbers, chat ids);
- :mod:`contract.profile` — the picture rule (any image → a square JPEG WhatsApp takes),
  checked by the API before a picture travels and applied by the agent.
"""
