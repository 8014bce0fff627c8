"""The Redis broker's Lua scripts: each presence change is one atomic step.

The key layout they work on is written down in ``chat.broker.redis``'s docstring.
Every script takes the cluster's prefix as ``ARGV[1]`` and builds the per-user and
per-device key names itself (``lease_key``, ``devices_key`` below, which the
broker's ``lease_key`` and ``devices_key`` spell the same way): one user's devices
are only known inside the script, once it has read the user's device set. That is
fine on one Redis server (this broker never runs on Redis Cluster).

A device goes into key names and fields as the hex of its UTF-8 bytes (``""`` is
the empty string), so any device name, ``:`` and ``@`` included, is safe there.

**Who announces what.** A user's ``online`` follows their device set
``P:devices:<user_id>``: a script that adds the first member hands out an "online"
version, a script that takes the last member off hands out an "offline" one, so
announcements of one user alternate, and each change is announced once however many
devices come and go. A device whose lease lapsed stays a member (it counts for
neither the device limit nor ``locate``) until whoever is responsible for it takes it
off: its holder's release, or the survivor that reaps its dead node. A lapsed device
that nobody took off is why a claim then announces nothing: nobody announced the
user gone either.
"""

from __future__ import annotations

# Names of a user's keys, and how many devices of a user are online now (leases that
# have not lapsed), not counting ``except``. Expects ``prefix`` in scope.
_KEYS = """
local prefix = ARGV[1]
local function lease_key(user, device)
  return prefix .. ':lease:' .. user .. ':' .. device
end
local function devices_key(user)
  return prefix .. ':devices:' .. user
end
local function live_devices(user, except)
  local count = 0
  for _, device in ipairs(redis.call('SMEMBERS', devices_key(user))) do
    if device ~= except and redis.call('EXISTS', lease_key(user, device)) == 1 then
      count = count + 1
    end
  end
  return count
end
"""

# The next presence version: Redis's clock in microseconds, but never less than one
# more than the last one handed out (a clock that steps back cannot reorder changes),
# and kept across a Redis that lost its data, unlike a counter. Formatted by hand:
# Lua would print a large number in exponent notation.
_NEXT_VERSION = """
local function next_version(clock)
  local now = redis.call('TIME')
  local version = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('GET', clock) or '0')
  if version <= last then
    version = last + 1
  end
  redis.call('SET', clock, string.format('%.0f', version))
  return version
end
"""

# List a device among the user's devices (a lease was just set for it); the presence
# version of the user coming online if it is the first, else 0.
_LIST_DEVICE = """
local function list_device(user, device, clock)
  local devices = devices_key(user)
  if redis.call('SADD', devices, device) == 1 and redis.call('SCARD', devices) == 1 then
    return next_version(clock)
  end
  return 0
end
local function unlist_device(user, device, clock)
  local devices = devices_key(user)
  if redis.call('SREM', devices, device) == 1 and redis.call('SCARD', devices) == 0 then
    return next_version(clock)
  end
  return 0
end
"""

_PRELUDE = _KEYS + _NEXT_VERSION + _LIST_DEVICE

# Claim one device's lease and note it among this node process's leases. KEYS: the
# epoch, the clock, this process's leases. ARGV: the prefix, the user id, the device
# (hex), the lease value, the lease in ms, a new epoch token, the broadcast channel
# and what to publish on it, the most devices a user may have online.
# Returns {1, version} when claimed (version 0: the user was online already), {0, 0}
# when another holder has the device or the user has too many devices online.
# Claiming again with the same holder succeeds (a retried command must not refuse
# itself). A missing epoch (Redis is new or lost its data) is written first and
# announced, so that every node re-asserts its leases now.
CLAIM = (
    _PRELUDE
    + """
local epoch, clock, held = KEYS[1], KEYS[2], KEYS[3]
local user, device, value = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', epoch) == 0 then
  redis.call('SET', epoch, ARGV[6])
  redis.call('PUBLISH', ARGV[7], ARGV[8])
end
local lease = lease_key(user, device)
local holder = redis.call('GET', lease)
if holder and holder ~= value then
  return {0, 0}
end
if not holder and live_devices(user, device) >= tonumber(ARGV[9]) then
  return {0, 0}
end
redis.call('SET', lease, value, 'PX', ARGV[5])
redis.call('HSET', held, user .. ':' .. device, value)
return {1, list_device(user, device, clock)}
"""
)

# Release device leases. KEYS: the clock, this process's leases. ARGV: the prefix,
# "1" to forget the devices (a session ended) or "0" (a node leaving: the devices
# stay listed, and the survivors find them gone with this node and announce their
# users), then (user id, device hex, lease value) for each device.
# A lease still held by its holder is deleted; so is one that lapsed while this
# process still lists it as its own (nobody took it off yet). Returns, per device,
# the presence version of its user going offline (its last device went), else 0.
RELEASE = (
    _PRELUDE
    + """
local clock, held = KEYS[1], KEYS[2]
local forget = ARGV[2] == '1'
local versions = {}
for i = 3, #ARGV, 3 do
  local user, device, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local field = user .. ':' .. device
  local lease = lease_key(user, device)
  local holder = redis.call('GET', lease)
  local listed = redis.call('HGET', held, field) == value
  local version = 0
  if holder == value or (not holder and listed) then
    redis.call('DEL', lease)
    if forget then
      version = unlist_device(user, device, clock)
    end
  end
  if forget and listed then
    redis.call('HDEL', held, field)
  end
  table.insert(versions, version)
end
return versions
"""
)

# Renew each device lease still ours; re-create a missing one (Redis lost it or it
# lapsed) unless the user has the most devices online by now; report the ones someone
# else holds now (or that no longer fit) and stop listing them as this process's.
# A missing lease that this process no longer lists was *released* meanwhile (its
# session ended after the beat read its list of leases, and the release ran first):
# it is left alone, unless this process's list itself may be gone (``recreate all``:
# Redis lost its data, or the reaper took the list of a node presumed dead).
# Re-creating it was what logged "leases had lapsed" under login/logout churn, and
# announced the user online again, then offline, to their friends.
# KEYS: the clock, this process's leases, the epoch. ARGV: the prefix, the lease in
# ms, the most devices of a user, the epoch this process knows ("" to recreate all;
# recreate all too when the epoch is not that one any more), then (user id, device
# hex, lease value) for each device.
# Returns {recreated, conflicts, versions, released}: indexes (from 1) of the devices
# re-created, of the ones lost, for each re-created one the presence version of its
# user coming online again (0: the user was online all along), and indexes of the
# ones released meanwhile.
RENEW = (
    _PRELUDE
    + """
local clock, held = KEYS[1], KEYS[2]
local most = tonumber(ARGV[3])
local recreate_all = ARGV[4] == '' or redis.call('GET', KEYS[3]) ~= ARGV[4]
local recreated, conflicts, versions, released = {}, {}, {}, {}
for i = 5, #ARGV, 3 do
  local user, device, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local index = (i - 2) / 3
  local field = user .. ':' .. device
  local lease = lease_key(user, device)
  local holder = redis.call('GET', lease)
  if holder == value then
    redis.call('PEXPIRE', lease, ARGV[2])
  elseif not holder and not recreate_all and redis.call('HGET', held, field) ~= value then
    table.insert(released, index)
  elseif not holder and live_devices(user, device) < most then
    redis.call('SET', lease, value, 'PX', ARGV[2])
    redis.call('HSET', held, field, value)
    table.insert(recreated, index)
    table.insert(versions, list_device(user, device, clock))
  else
    if redis.call('HGET', held, field) == value then
      redis.call('HDEL', held, field)
    end
    table.insert(conflicts, index)
  end
end
return {recreated, conflicts, versions, released}
"""
)

# The current epoch; a missing one means Redis is new or lost its data: write a new
# one and announce it, so that every node re-asserts its leases now. Also: this node
# is alive for another lease (KEYS[2]) and listed among the cluster's nodes (KEYS[3]),
# so that the others notice when it dies and send it group wake-ups. Returns {epoch,
# 1 if this node was alive already, else 0 (group wake-ups may have passed it by)}.
EPOCH = """
local alive = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  epoch = ARGV[1]
end
return {epoch, alive}
"""

# Find the devices of node processes that died without a word. KEYS: the set of node
# processes, the clock; ARGV: the prefix, this process's own name, how many devices
# to look at per dead process. A process is dead once its liveness key has expired;
# each device it still lists is taken off its list here, atomically, so only one
# survivor ever deals with it: gone (its lease expired: taken off the user's devices,
# and if that was the user's last one, the user is gone, with a new presence
# version), or logged in elsewhere meanwhile (that login's to deal with now).
# Devices whose lease has not expired yet stay listed for a later look; a dead
# process listing nothing is forgotten. Returns {user, version, ...}.
REAP = (
    _PRELUDE
    + """
local nodes, clock = KEYS[1], KEYS[2]
local gone = {}
for _, node in ipairs(redis.call('SMEMBERS', nodes)) do
  if node ~= ARGV[2] and redis.call('EXISTS', prefix .. ':alive:' .. node) == 0 then
    local held = prefix .. ':leases:' .. node
    local page = redis.call('HSCAN', held, '0', 'COUNT', ARGV[3])[2]
    for i = 1, #page, 2 do
      local field, value = page[i], page[i + 1]
      local user, device = string.match(field, '^(%d+):(%x*)$')
      local holder = user and redis.call('GET', lease_key(user, device))
      if not user then
        redis.call('HDEL', held, field)
      elseif holder ~= value then
        redis.call('HDEL', held, field)
        if not holder then
          local version = unlist_device(user, device, clock)
          if version ~= 0 then
            table.insert(gone, tonumber(user))
            table.insert(gone, version)
          end
        end
      end
    end
    if redis.call('HLEN', held) == 0 then
      redis.call('SREM', nodes, node)
    end
  end
end
return gone
"""
)

# Who holds the devices of some users, and (ARGV[2] == "1") which node processes are
# alive. ARGV: the prefix, "1" or "0", then user ids. Reads only. Returns {alive
# processes, {device hex, lease value, ...} for each user}; lapsed devices left out.
LOOKUP = (
    _KEYS
    + """
local result = {{}}
if ARGV[2] == '1' then
  for _, node in ipairs(redis.call('SMEMBERS', prefix .. ':nodes')) do
    if redis.call('EXISTS', prefix .. ':alive:' .. node) == 1 then
      table.insert(result[1], node)
    end
  end
end
for i = 3, #ARGV do
  local user = ARGV[i]
  local found = {}
  for _, device in ipairs(redis.call('SMEMBERS', devices_key(user))) do
    local value = redis.call('GET', lease_key(user, device))
    if value then
      table.insert(found, device)
      table.insert(found, value)
    end
  end
  table.insert(result, found)
end
return result
"""
)
