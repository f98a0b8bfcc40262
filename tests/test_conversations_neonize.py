"""The neonize engine's conversation builders and decoders, offline (issue 15): inbound
whatsmeow events are constructed as protos and decoded; every outbound proto is built
and checked field by field. No socket, no Go call."""

from __future__ import annotations

from typing import Any

from node_agent.engines.neonize.protos import inbound_of


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
    event = _event(_text("who?"), sender=_jid("99887766", "lid"), chat=_jid("99887766", "lid"))
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


# -- outbound builders ------------------------------------------------------------------------


def test_a_plain_text_stays_a_conversation() -> None:
    from node_agent.engines.neonize.protos import build_text

    message = build_text("hi")
    assert message.conversation == "hi" and not message.HasField("extendedTextMessage")


def test_a_reply_with_mentions_carries_the_quote_and_the_jids() -> None:
    from node_agent.engines.neonize.protos import build_text

    quoted = _text("the question")
    message = build_text(
        "@15550001111 answer",
        reply_to="3EB0QUOTED",
        quoted=("5544332211@lid", quoted),
        mentions=["15550001111", "99887766@lid", "15550001111"],
    )
    extended = message.extendedTextMessage
    assert extended.text == "@15550001111 answer"
    context = extended.contextInfo
    assert context.stanzaID == "3EB0QUOTED"
    assert context.participant == "5544332211@lid"
    assert context.quotedMessage.conversation == "the question"
    assert list(context.mentionedJID) == ["15550001111@s.whatsapp.net", "99887766@lid"]
    # a reply to a message this agent never saw still names it
    bare = build_text("x", reply_to="3EB0UNKNOWN").extendedTextMessage.contextInfo
    assert bare.stanzaID == "3EB0UNKNOWN" and not bare.HasField("quotedMessage")


def test_an_edit_is_whatsmeows_build_edit() -> None:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from node_agent.engines.neonize.protos import build_edit

    message = build_edit("15550002222@s.whatsapp.net", "3EB0ORIG", "fixed", now_ms=1718000000000)
    protocol = message.editedMessage.message.protocolMessage
    assert protocol.type == e2e.ProtocolMessage.MESSAGE_EDIT
    assert (protocol.key.remoteJID, protocol.key.fromMe, protocol.key.ID) == (
        "15550002222@s.whatsapp.net",
        True,
        "3EB0ORIG",
    )
    assert protocol.editedMessage.conversation == "fixed"
    assert protocol.timestampMS == 1718000000000


def test_a_revoke_is_whatsmeows_build_revoke_of_our_message() -> None:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from node_agent.engines.neonize.protos import build_revoke

    protocol = build_revoke("120363012345678901@g.us", "3EB0ORIG").protocolMessage
    assert protocol.type == e2e.ProtocolMessage.REVOKE
    assert (protocol.key.remoteJID, protocol.key.fromMe, protocol.key.ID) == (
        "120363012345678901@g.us",
        True,
        "3EB0ORIG",
    )


def test_a_poll_has_its_options_its_choice_count_and_a_message_secret() -> None:
    from node_agent.engines.neonize.protos import build_poll

    message = build_poll("Lunch?", ["Pizza", "Sushi", "Salad"], 1)
    poll = message.pollCreationMessage
    assert poll.name == "Lunch?"
    assert [o.optionName for o in poll.options] == ["Pizza", "Sushi", "Salad"]
    assert poll.selectableOptionsCount == 1
    assert len(message.messageContextInfo.messageSecret) == 32
    assert build_poll("x", ["a", "b"], 0).pollCreationMessage.selectableOptionsCount == 0
    assert build_poll("x", ["a", "b"], 5).pollCreationMessage.selectableOptionsCount == 0


# -- inbound decoders -------------------------------------------------------------------------


def _from_ann(message: Any) -> Any:
    return _event(
        message,
        sender=_jid("15550001111", "s.whatsapp.net"),
        chat=_jid("15550001111", "s.whatsapp.net"),
        message_id="3EB0EVENT",
    )


def test_inbound_edits_revokes_and_reactions_name_their_target() -> None:
    from node_agent.engines.neonize.protos import build_edit, build_revoke

    edit = inbound_of(_from_ann(build_edit("x@s.whatsapp.net", "3EB0ORIG", "new text")))
    assert edit is not None
    assert (edit.type, edit.text, edit.content) == (
        "edit",
        "new text",
        {"message_id": "3EB0ORIG", "push_name": "Ann"},
    )
    revoke = inbound_of(_from_ann(build_revoke("x@s.whatsapp.net", "3EB0ORIG")))
    assert revoke is not None and revoke.type == "revoke"
    assert revoke.content is not None and revoke.content["message_id"] == "3EB0ORIG"

    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    for emoji in ("❤️", ""):
        reaction = e2e.Message(
            reactionMessage=e2e.ReactionMessage(key=MessageKey(ID="3EB0ORIG"), text=emoji)
        )
        decoded = inbound_of(_from_ann(reaction))
        assert decoded is not None and decoded.type == "reaction"
        assert decoded.content is not None
        assert (decoded.content["message_id"], decoded.content["emoji"]) == ("3EB0ORIG", emoji)


def test_an_edit_whatsmeow_already_unwrapped_is_still_an_edit() -> None:
    from node_agent.engines.neonize.protos import build_edit

    event = _from_ann(_text("new text"))
    event.IsEdit = True
    event.Raw.CopyFrom(build_edit("x@s.whatsapp.net", "3EB0ORIG", "new text"))
    decoded = inbound_of(event)
    assert decoded is not None and (decoded.type, decoded.text) == ("edit", "new text")
    assert decoded.content is not None and decoded.content["message_id"] == "3EB0ORIG"


def test_inbound_replies_mentions_polls_and_votes() -> None:
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from node_agent.engines.neonize.protos import build_poll, build_text, poll_option_names

    reply = build_text("hi @x", reply_to="3EB0Q", mentions=["15550002222", "42@lid"])
    decoded = inbound_of(_from_ann(reply))
    assert decoded is not None and decoded.type == "text"
    assert decoded.content == {
        "reply_to": "3EB0Q",
        "mentions": ["15550002222", "42@lid"],
        "push_name": "Ann",
    }
    poll = inbound_of(_from_ann(build_poll("Lunch?", ["Pizza", "Sushi"], 0)))
    assert poll is not None and (poll.type, poll.text) == ("poll", "Lunch?")
    assert poll.content is not None and poll.content["options"] == ["Pizza", "Sushi"]
    update = e2e.Message(
        pollUpdateMessage=e2e.PollUpdateMessage(pollCreationMessageKey=MessageKey(ID="3EB0POLL"))
    )
    vote = inbound_of(_from_ann(update))
    assert vote is not None and vote.type == "poll_vote"
    assert vote.content is not None and vote.content["message_id"] == "3EB0POLL"
    # a decrypted vote lists SHA-256 hashes of the chosen names
    import hashlib

    chosen = [hashlib.sha256(b"Sushi").digest(), hashlib.sha256(b"Unknown").digest()]
    assert poll_option_names(["Pizza", "Sushi"], chosen) == ["Sushi"]


# -- presence -----------------------------------------------------------------------------------


def test_typing_recording_and_paused_map_to_whatsmeows_chat_presence() -> None:
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia

    from node_agent.engines.neonize.protos import chat_presence_args

    assert chat_presence_args("typing") == (
        ChatPresence.CHAT_PRESENCE_COMPOSING,
        ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT,
    )
    assert chat_presence_args("recording") == (
        ChatPresence.CHAT_PRESENCE_COMPOSING,
        ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO,
    )
    assert chat_presence_args("paused")[0] == ChatPresence.CHAT_PRESENCE_PAUSED


def test_inbound_chat_presence_names_chat_and_person_without_lids_as_phones() -> None:
    from neonize.proto.Neonize_pb2 import ChatPresence, MessageSource

    from node_agent.engines.neonize.protos import presence_of

    source = MessageSource(
        Chat=_jid("120363012345678901", "g.us"), Sender=_jid("5544332211", "lid"), IsGroup=True
    )
    source.SenderAlt.CopyFrom(_jid("15550003333", "s.whatsapp.net"))
    seen = presence_of(ChatPresence(MessageSource=source, State=1, Media=2))
    assert seen is not None
    assert (seen.chat, seen.sender, seen.sender_lid, seen.state) == (
        "120363012345678901@g.us",
        "15550003333",
        "5544332211@lid",
        "recording",
    )
    alone = MessageSource(Chat=_jid("5544332211", "lid"), Sender=_jid("5544332211", "lid"))
    paused = presence_of(ChatPresence(MessageSource=alone, State=2, Media=1))
    assert paused is not None
    assert (paused.chat, paused.sender, paused.state) == ("5544332211@lid", None, "paused")


def test_an_undecryptable_message_is_reported_with_its_sender() -> None:
    from neonize.proto.Neonize_pb2 import MessageInfo, MessageSource, UndecryptableMessage

    from node_agent.engines.neonize.protos import undecryptable_of

    source = MessageSource(
        Chat=_jid("120363012345678901", "g.us"), Sender=_jid("5544332211", "lid"), IsGroup=True
    )
    source.SenderAlt.CopyFrom(_jid("15550003333", "s.whatsapp.net"))
    event = UndecryptableMessage(
        Info=MessageInfo(MessageSource=source, ID="3EB0WAIT", Timestamp=1718000000),
        IsUnavailable=True,
        DecryptFailMode=UndecryptableMessage.DECRYPT_FAIL_HIDE,
    )
    inbound = undecryptable_of(event)
    assert inbound is not None
    assert (inbound.type, inbound.message_id, inbound.text) == ("undecryptable", "3EB0WAIT", None)
    assert (inbound.sender, inbound.sender_lid, inbound.chat) == (
        "15550003333",
        "5544332211@lid",
        "120363012345678901@g.us",
    )
    assert inbound.content == {"unavailable": True, "hidden": True}
    assert inbound.timestamp == 1718000000.0


def test_a_link_preview_fills_the_extended_text_and_is_read_back() -> None:
    from node_agent.engines.neonize.protos import build_text
    from node_agent.link_preview import LinkPreview

    preview = LinkPreview(url="https://e.com/a", title="Title", description="Desc")
    message = build_text("see https://e.com/a", preview=preview)
    extended = message.extendedTextMessage
    assert (extended.text, extended.matchedText, extended.title, extended.description) == (
        "see https://e.com/a",
        "https://e.com/a",
        "Title",
        "Desc",
    )
    assert not extended.HasField("contextInfo")
    decoded = inbound_of(_from_ann(message))
    assert decoded is not None and decoded.content is not None
    assert decoded.content["preview"] == {
        "url": "https://e.com/a",
        "title": "Title",
        "description": "Desc",
    }
    with_reply = build_text("x https://e.com/a", reply_to="3EB0Q", preview=preview)
    assert with_reply.extendedTextMessage.contextInfo.stanzaID == "3EB0Q"
    assert with_reply.extendedTextMessage.title == "Title"


def test_mention_everyone_names_each_participant_as_the_group_addresses_it() -> None:
    from neonize.proto.Neonize_pb2 import GroupInfo, GroupParticipant

    from node_agent.engines.neonize.protos import build_text, participant_ids

    info = GroupInfo(
        Participants=[
            GroupParticipant(JID=_jid("15550001111", "s.whatsapp.net")),
            GroupParticipant(
                JID=_jid("5544332211", "lid"), PhoneNumber=_jid("15550002222", "s.whatsapp.net")
            ),
        ]
    )
    everyone = participant_ids(info)
    assert everyone == ["15550001111", "5544332211@lid"]
    context = build_text("@all", mentions=everyone).extendedTextMessage.contextInfo
    assert list(context.mentionedJID) == ["15550001111@s.whatsapp.net", "5544332211@lid"]
