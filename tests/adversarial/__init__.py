"""The adversarial suite: a real server on 127.0.0.1 attacked the way the open internet does.

Smuggling and STARTTLS injection, slowloris clients, floods, clients that vanish, and handlers
that misbehave. Every attack is bounded in bytes and in time, and every test checks that the
next honest client is still served.
"""
