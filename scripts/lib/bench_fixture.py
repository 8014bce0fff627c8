"""chat-server import-users lines for scripts/bench-devices: PREFIX-u0 .. PREFIX-u(USERS-1)
and, with GROUP-SIZE > 0, the group PREFIX-gGROUP-SIZE (creator PREFIX-u0, members the
next GROUP-SIZE - 1 users), as chat-bench's group and flood scenarios find it.

    python bench_fixture.py PREFIX USERS GROUP-SIZE > fixture.jsonl

Every account gets one password hash (chat-bench's password) made with scrypt at its
smallest cost (N=2, r=1, p=1), in the format the server writes: the server checks a
hash with the parameters stored in it, so thousands of benchmark logins cost no
scrypt of the server's own strength. For benchmark accounts only.
"""

import base64
import hashlib
import json
import os
import sys

PASSWORD = "bench-password"  # chat.bench.model.PASSWORD

prefix, users, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
salt = os.urandom(16)
key = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
cheap = f"scrypt$2$1$1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
out = sys.stdout
for index in range(users):
    out.write(json.dumps({"name": f"{prefix}-u{index}", "password_hash": cheap}) + "\n")
if size:
    members = [f"{prefix}-u{index}" for index in range(1, size)]
    group = {"group": f"{prefix}-g{size}", "creator": f"{prefix}-u0", "members": members}
    out.write(json.dumps(group) + "\n")
