"""The neonize engine's conversation builders and decoders, offline (issue 15): inbound
whatsmeow events are constructed as protos and decoded; every outbound proto is built
and checked field by field. No socket, no Go call."""

from __future__ import annotations

from typing import Any

from node_agent.engines.neonize import inbound_of


def _jid(user: str, server: str) -> Any:
    from neonize.proto.Neonize_pb2 import JID

    return JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def _event(
    message: Any,
    *,
    sender: Any,
    chat: Any,
    sender_alt: Any = None,
    is_group: bool = False,
    message_id: str = "3EB0AA",
) -> Any:
    from neonize.proto.Neonize_pb2 import Message, MessageInfo, MessageSource

    source = MessageSource(Chat=chat, Sender=sender, IsFromMe=False, IsGroup=is_group)
    if sender_alt is not None:
        source.SenderAlt.CopyFrom(sender_alt)
    info = MessageInfo(MessageSource=source, ID=message_id, Timestamp=1718000000, Pushname="Ann")
    return Message(Info=info, Message=message)


def _text(text: str) -> Any:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    return e2e.Message(conversation=text)


def test_a_lid_sender_with_its_phone_as_alt_gives_both_separately() -> None:
    event = _event(
        _text("hi"),
        sender=_jid("123456789012345", "lid"),
        sender_alt=_jid("15550001111", "s.whatsapp.net"),
        chat=_jid("123456789012345", "lid"),
    )
    inbound = inbound_of(event)
    assert inbound is not None
    assert inbound.sender == "15550001111"
    assert inbound.sender_lid == "123456789012345@lid"
    assert inbound.chat is None
    assert (inbound.type, inbound.text, inbound.message_id) == ("text", "hi", "3EB0AA")
    assert inbound.content == {"push_name": "Ann"}


def test_a_lid_only_sender_has_no_phone_until_it_is_resolved() -> None:
    event = _event(
        _text("who?"), sender=_jid("99887766", "lid"), chat=_jid("99887766", "lid")
    )
    inbound = inbound_of(event)
    assert inbound is not None
    assert inbound.sender is None  # never the LID's digits as if they were a phone
    assert inbound.sender_lid == "99887766@lid"


def test_a_phone_sender_with_a_lid_alt() -> None:
    event = _event(
        _text("pn"),
        sender=_jid("15550002222", "s.whatsapp.net"),
        sender_alt=_jid("5544332211", "lid"),
        chat=_jid("15550002222", "s.whatsapp.net"),
    )
    inbound = inbound_of(event)
    assert inbound is not None
    assert (inbound.sender, inbound.sender_lid, inbound.chat) == (
        "15550002222",
        "5544332211@lid",
        None,
    )


def test_in_a_group_chat_is_the_group_and_sender_the_participant() -> None:
    event = _event(
        _text("all"),
        sender=_jid("5544332211", "lid"),
        sender_alt=_jid("15550003333", "s.whatsapp.net"),
        chat=_jid("120363012345678901", "g.us"),
        is_group=True,
    )
    inbound = inbound_of(event)
    assert inbound is not None
    assert inbound.chat == "120363012345678901@g.us"
    assert inbound.sender == "15550003333"
    assert inbound.sender_lid == "5544332211@lid"


def test_our_own_messages_are_not_inbound() -> None:
    event = _event(_text("me"), sender=_jid("1", "s.whatsapp.net"), chat=_jid("2", "lid"))
    event.Info.MessageSource.IsFromMe = True
    assert inbound_of(event) is None
