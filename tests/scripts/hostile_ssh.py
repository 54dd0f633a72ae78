#!/usr/bin/env python3
"""What SSH servers' advisories teach, sent the way a hostile client would (paramiko, and a raw
socket where the protocol is broken on purpose). Run by the lab's tests from the admin namespace
with the lab's Python (cargo xtask setup installs paramiko). Prints one line per step saying what
the server did; the test judges it.

Usage: hostile_ssh.py answers HOST PORT USER KEYFILE N  N keyboard-interactive answers at once
       hostile_ssh.py huge-packet HOST PORT              a packet claiming 2 GiB, after the banner
       hostile_ssh.py window HOST PORT USER KEYFILE      the largest window and packet size, then
                                                         a window adjustment past 2^32
"""

import socket
import sys
import threading
import time

import paramiko

TIMEOUT = 20


def transport(host, port):
    t = paramiko.Transport(socket.create_connection((host, int(port)), timeout=TIMEOUT))
    t.start_client(timeout=TIMEOUT)
    return t


def answers(host, port, user, keyfile, n):
    t = transport(host, port)
    remaining = t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(keyfile))
    print("after the key, methods left:", ",".join(remaining) or "none")
    # paramiko's own auth_interactive asks for the ssh-userauth service again, which a server
    # that already serves it need not answer: go on in the same authentication instead.
    done = threading.Event()
    h = t.auth_handler
    h.auth_event = done
    h.auth_method = "keyboard-interactive"
    h.username = user
    h.submethods = ""
    h.interactive_handler = lambda title, instructions, prompts: ["000000"] * int(n)
    accept = paramiko.Message()
    accept.add_string("ssh-userauth")
    accept.rewind()
    with t.lock:
        h._parse_service_accept(accept)
    done.wait(TIMEOUT)
    print(f"{n} answers:", "accepted" if t.is_authenticated() else "refused")
    t.close()


def huge_packet(host, port):
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    banner = s.recv(256)
    print("banner:", banner.split(b"\r\n")[0].decode(errors="replace"))
    s.sendall(b"SSH-2.0-hostile\r\n")
    s.sendall(b"\x7f\xff\xff\xff" + b"\x00" * 4096)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                print("huge packet: connection closed")
                return
        print("huge packet: still open")
    except (ConnectionResetError, BrokenPipeError):
        print("huge packet: connection closed")
    except socket.timeout:
        print("huge packet: still open")


def window(host, port, user, keyfile):
    t = transport(host, port)
    t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(keyfile))
    chan = t.open_channel("session", window_size=2**32 - 1, max_packet_size=2**32 - 1)
    chan.settimeout(TIMEOUT)
    chan.exec_command("echo window-ok")
    out = b""
    while b"window-ok" not in out:
        data = chan.recv(1024)
        if not data:
            break
        out += data
    print("largest window:", out.decode(errors="replace").strip())
    chan2 = t.open_channel("session", window_size=2**32 - 1, max_packet_size=2**32 - 1)
    m = paramiko.Message()
    m.add_byte(bytes([93]))  # SSH_MSG_CHANNEL_WINDOW_ADJUST
    m.add_int(chan2.remote_chanid)
    m.add_int(2**32 - 1)
    t._send_user_message(m)
    t._send_user_message(m)
    time.sleep(2)
    print("window past 2^32:", "connection open" if t.is_active() else "connection closed")
    t.close()


def main(argv):
    modes = {"answers": answers, "huge-packet": huge_packet, "window": window}
    if len(argv) < 4 or argv[1] not in modes:
        print(__doc__, file=sys.stderr)
        return 2
    modes[argv[1]](*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
