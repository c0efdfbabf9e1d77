//! The Lua scripts behind every write: each checks the job's state and writes in one
//! round trip, atomically, on the job's keys only (one cluster slot).

use std::sync::LazyLock;

use redis::{Arg, Cmd, ErrorKind, FromRedisValue, RedisWrite as _, ServerErrorKind, ToRedisArgs};

use super::Conn;

/// Creates the meta hash unless the job exists, or was deleted while its tombstone
/// lives. KEYS: meta, deleted. ARGV: ttl, then field/value pairs.
pub(super) static CREATE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
",
    )
});

/// The Lua that numbers and stores one entry: `add(json)` gives it the job's next `n`
/// (spliced in front of its fields, as `logstream_core::model::numbered_json` does);
/// `add_numbered(json, k)` takes an entry the caller numbered `k` already, as it is when
/// `k` is the job's next `n` (no string is built in Lua: on a 100-line batch that is
/// about 40 % of the script's time), and numbers it again otherwise. Both `XADD` it
/// (capped at `cap` entries when there is no archive, `'0'` otherwise) and record every
/// `IDX_BLOCK`th entry's id in the `idx` hash. Shared by the scripts that append;
/// expects `KEYS[2]` = logs, `KEYS[4]` = idx and the locals `n`, `stored`, `cap`.
macro_rules! add_entry_lua {
    () => {
        r#"
local first, last, first_n
local function put(e)
  local id
  if cap ~= '0' then
    id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', cap, '*', 'e', e)
  else
    id = redis.call('XADD', KEYS[2], '*', 'e', e)
  end
  if (n - 1) % 256 == 0 then redis.call('HSET', KEYS[4], (n - 1) / 256, id) end
  stored = stored + #e
  first = first or id
  first_n = first_n or n
  last = id
end
local function add(json)
  n = n + 1
  put(string.format('{"n":%d,%s', n, string.sub(json, 2)))
end
local function add_numbered(json, k)
  n = n + 1
  if n == k then
    put(json)
  else
    local comma = string.find(json, ',', 6, true)
    put(string.format('{"n":%d%s', n, string.sub(json, comma)))
  end
end
"#
    };
}

/// Appends a batch if the job exists, is not terminal, has the caller's write check
/// (`gen`, or `gen#sv` once secrets were added: see [`ADD_SECRETS`]) and the
/// batch's `seq` is new, and the batch was sanitized from the job's stored private-key
/// carry (`pem`, see `logstream_core::sanitize::Batch::carry`; `carry` with the stored
/// one otherwise, so the caller sanitizes again). Every entry gets the job's next `n`.
///
/// Lines count against the job's size limit by their text bytes: the first line that
/// would pass it is replaced by the `notice` entry (a `system` line), and it and every
/// later line of the job are dropped (stage and status entries, size 0, still go in).
///
/// The same check and update hold for the groups and sections the job's build markers
/// left open (`mk`, `logstream_core::markers::Open`), for a batch that had such a
/// marker; `carry` then answers both. Secrets registered by the batch's
/// `::add-mask::` lines join the job's `secrets` (and count in `sv`, as [`ADD_SECRETS`]
/// does); the caller checked the limit against the secrets the write check vouches
/// for.
///
/// KEYS: meta, logs, ws, idx. ARGV: gen, seq or '', ttl, cap ('0': none), carry
/// sanitized from or '' (no check), carry after or '', size limit, notice, segment
/// lines, segment bytes, open markers before ('' no check) and after, the masks (a JSON
/// array, or ''), the `n` the caller numbered the first entry with ('': the entries are
/// not numbered; else entry i is numbered that + i, and renumbered here when the job's
/// `n` differs), the entries' text bytes in all, each entry's text bytes (decimal,
/// comma-separated: read only when the batch may cross the size limit, so a batch
/// well inside it costs no per-line check), then each entry's JSON. Answers `ok`,
/// the first and last ids and the first `n` ('' when nothing was stored), the lines
/// accepted and dropped, whether the notice went in, whether a segment became due (the
/// entries or bytes not yet archived crossed a multiple of the segment size), then the
/// job's WebSocket connection ids, each followed by its token's expiry (so the caller can
/// push the batch without another round trip). The seq check comes before the terminal
/// check so that a retry of a batch that was accepted just before the job ended is still
/// answered as a duplicate.
pub(super) static APPEND: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(concat!(
        r"
local m = redis.call('HMGET', KEYS[1], 'status', 'gen', 'seq', 'pem', 'n', 'bytes', 'trunc',
  'stored', 'arch_n', 'arch_b', 'sv', 'mk')
if not m[1] then return {'missing'} end
local check = m[2]
if m[11] then check = (m[2] or '') .. '#' .. m[11] end
if ARGV[1] ~= '' and check ~= ARGV[1] then return {'stale'} end
if ARGV[2] ~= '' then
  if m[3] and tonumber(ARGV[2]) <= tonumber(m[3]) then return {'duplicate'} end
end
if m[1] == 'ready' or m[1] == 'failed' then return {'terminal', m[1]} end
local pem, mk = m[4] or '0', m[12] or '{}'
if (ARGV[5] ~= '' and pem ~= ARGV[5]) or (ARGV[11] ~= '' and mk ~= ARGV[11]) then
  return {'carry', pem, mk}
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'seq', ARGV[2]) end
if ARGV[6] ~= '' and ARGV[6] ~= pem then redis.call('HSET', KEYS[1], 'pem', ARGV[6]) end
if ARGV[12] ~= '' and ARGV[12] ~= mk then redis.call('HSET', KEYS[1], 'mk', ARGV[12]) end
if ARGV[13] ~= '' then
  local have = {}
  local cur = redis.call('HGET', KEYS[1], 'secrets')
  if cur and cur ~= '[]' then have = cjson.decode(cur) end
  local seen = {}
  for _, s in ipairs(have) do seen[s] = true end
  for _, s in ipairs(cjson.decode(ARGV[13])) do
    if not seen[s] then seen[s] = true; have[#have + 1] = s end
  end
  redis.call('HSET', KEYS[1], 'secrets', cjson.encode(have))
  redis.call('HINCRBY', KEYS[1], 'sv', 1)
end
local n = tonumber(m[5] or '0')
local bytes = tonumber(m[6] or '0')
local trunc = m[7] == '1'
local stored = tonumber(m[8] or '0')
local cap = ARGV[4]
local limit = tonumber(ARGV[7])
local seg_lines, seg_bytes = tonumber(ARGV[9]), tonumber(ARGV[10])
local pending_n = n - tonumber(m[9] or '0')
local pending_b = stored - tonumber(m[10] or '0')
",
        add_entry_lua!(),
        r"
local accepted, dropped, notice = 0, 0, 0
local guess = tonumber(ARGV[14])
local total = tonumber(ARGV[15])
if not trunc and bytes + total <= limit then
  bytes = bytes + total
  accepted = #ARGV - 16
  if guess == n + 1 and cap == '0' then
    -- The common case, one writer per job with an archive: every entry is stored as
    -- sent, so `put`'s work is done here inline (about 11 % of the script's time).
    local call, logs, idx = redis.call, KEYS[2], KEYS[4]
    if accepted > 0 then first_n = n + 1 end
    for i = 17, #ARGV do
      local e = ARGV[i]
      local id = call('XADD', logs, '*', 'e', e)
      if n % 256 == 0 then call('HSET', idx, n / 256, id) end
      n = n + 1
      stored = stored + #e
      first = first or id
      last = id
    end
  else
    for i = 17, #ARGV do
      if guess then add_numbered(ARGV[i], guess + (i - 17)) else add(ARGV[i]) end
    end
  end
else
  local i = 17
  for digits in string.gmatch(ARGV[16], '%d+') do
    local size = tonumber(digits)
    if size > 0 and (trunc or bytes + size > limit) then
      dropped = dropped + 1
      if not trunc then
        trunc = true
        notice = 1
        add(ARGV[8])
      end
    else
      bytes = bytes + size
      accepted = accepted + 1
      if guess then add_numbered(ARGV[i], guess + (i - 17)) else add(ARGV[i]) end
    end
    i = i + 1
  end
end
local fields = {'n', n, 'bytes', bytes, 'stored', stored}
if trunc then fields[#fields + 1] = 'trunc'; fields[#fields + 1] = '1' end
redis.call('HSET', KEYS[1], unpack(fields))
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local now_n, now_b = n - tonumber(m[9] or '0'), stored - tonumber(m[10] or '0')
local due = 0
if math.floor(now_n / seg_lines) > math.floor(pending_n / seg_lines)
  or math.floor(now_b / seg_bytes) > math.floor(pending_b / seg_bytes) then due = 1 end
local r = {'ok', first or '', last or '', first_n or '', accepted, dropped, notice, due}
for _, c in ipairs(redis.call('HGETALL', KEYS[3])) do r[#r + 1] = c end
return r
",
    ))
});

/// Registers more literal secrets for the rest of a running job: adds the ones it does
/// not have to the meta hash's `secrets` (a JSON array), at most `ARGV[1]` in all, and
/// counts the change in `sv`, which is part of the append script's write check: a
/// batch sanitized by any instance with the old list is answered `stale`, and that
/// instance reloads the job and sanitizes it again. KEYS: meta. ARGV: the most secrets
/// a job may have, then the secrets. Answers `ok` and how many were new; `missing`;
/// `terminal`; `full` and how many the job has.
pub(super) static ADD_SECRETS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'status', 'secrets')
if not m[1] then return {'missing'} end
if m[1] == 'ready' or m[1] == 'failed' then return {'terminal'} end
local have = {}
if m[2] and m[2] ~= '[]' then have = cjson.decode(m[2]) end
local seen = {}
for _, s in ipairs(have) do seen[s] = true end
local added = 0
for i = 2, #ARGV do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    have[#have + 1] = ARGV[i]
    added = added + 1
  end
end
if #have > tonumber(ARGV[1]) then return {'full', tostring(#have - added)} end
if added > 0 then
  redis.call('HSET', KEYS[1], 'secrets', cjson.encode(have))
  redis.call('HINCRBY', KEYS[1], 'sv', 1)
end
return {'ok', tostring(added)}
",
    )
});

/// The share generation a new link is issued under, kept `ARGV[1]` seconds from now:
/// the job's, or `ARGV[2]` (random) when it has none yet. A link verifies only while
/// its generation is on record, so a record lost to eviction or a flush takes every
/// link issued under it along rather than reviving revoked ones. KEYS: the job's share
/// key.
pub(super) static SHARE_ISSUE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local g = redis.call('GET', KEYS[1])
if not g then
  g = ARGV[2]
  redis.call('SET', KEYS[1], g)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return g
",
    )
});

/// Moves a job to a new status, appending its `status` entry (numbered like any
/// other). `running` stamps `started_at`; a terminal status stamps `finished_at`,
/// records the exit code (`exit`, when given) and the job's duration (`dur`, from
/// `started_at`, or `created_at` for a job that never ran), which is also appended to
/// the entry as its last field, `duration_ms`. The allowed moves mirror
/// [`JobStatus::transition`]. KEYS: meta, logs, ws, idx (one job's keys only: the
/// archive queue lives in another slot and is written by [`LogStore::set_status`] after
/// this script). ARGV: status, entry, ttl, cap ('0': none), now, exit code ('' none).
/// Answers `ok`, the id, its `n`, the duration ('' unless terminal), then the job's
/// WebSocket connection ids (each followed by its token's expiry); or `same` with
/// `finished_at` and `archived`, so a retried terminal update can queue the job again if
/// the first attempt stopped before it did.
pub(super) static SET_STATUS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(concat!(
        r"
local m = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'archived', 'n', 'stored',
  'created_at', 'started_at')
local cur = m[1]
if not cur then return {'missing'} end
local to = ARGV[1]
if cur == to then return {'same', m[2] or '', m[3] or ''} end
local ok = (cur == 'queued' and (to == 'running' or to == 'failed'))
  or (cur == 'running' and (to == 'ready' or to == 'failed'))
if not ok then return {'forbidden', cur} end
local n = tonumber(m[4] or '0')
local stored = tonumber(m[5] or '0')
local cap = ARGV[4]
",
        add_entry_lua!(),
        r#"
local entry, dur = ARGV[2], ''
if to == 'ready' or to == 'failed' then
  dur = math.max(0, tonumber(ARGV[5]) - tonumber(m[7] or m[6] or ARGV[5]))
  entry = string.sub(entry, 1, -2) .. ',"duration_ms":' .. dur .. '}'
end
add(entry)
redis.call('HSET', KEYS[1], 'status', to, 'n', n, 'stored', stored)
if to == 'running' then redis.call('HSET', KEYS[1], 'started_at', ARGV[5]) end
if dur ~= '' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[5], 'dur', dur)
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'exit', ARGV[6]) end
end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local r = {'ok', first, n, tostring(dur)}
for _, c in ipairs(redis.call('HGETALL', KEYS[3])) do r[#r + 1] = c end
return r
"#,
    ))
});

/// Records that a job's entries up to `n` are safely in the archive's segments, and
/// trims the stream: it keeps at most `keep` of the newest entries (the live tail, cut
/// at the first whole `idx` block inside it, so at least `keep` - 255 of them), never an
/// entry that is not archived and always the last archived one, so that with a segment
/// of unarchived entries the stream stays within `keep` plus one segment. Only ever moves forward, and
/// only for the job's generation `gen` (a job deleted and created again under the same
/// id is not trimmed by a flush of the old one). KEYS: meta, logs, idx. ARGV: gen, n,
/// id of entry n, its stored JSON bytes so far, keep. Answers the entries removed, or -1
/// when the job is gone, recreated, or already archived that far.
pub(super) static ARCHIVED_UPTO: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'gen', 'n', 'arch_n', 'idx_lo')
if not m[1] or m[1] ~= ARGV[1] then return -1 end
local upto = tonumber(ARGV[2])
if upto <= tonumber(m[3] or '0') then return -1 end
redis.call('HSET', KEYS[1], 'arch_n', upto, 'arch_id', ARGV[3], 'arch_b', ARGV[4])
local keep_from = math.min(tonumber(m[2]) - tonumber(ARGV[5]) + 1, upto + 1)
local block = math.min(math.ceil((keep_from - 1) / 256), math.floor((upto - 1) / 256))
local lo = tonumber(m[4] or '0')
if block <= lo then return 0 end
local id = redis.call('HGET', KEYS[3], block)
if not id then return 0 end
local removed = redis.call('XTRIM', KEYS[2], 'MINID', id)
for b = lo, block - 1 do redis.call('HDEL', KEYS[3], b) end
redis.call('HSET', KEYS[1], 'idx_lo', block)
return removed
",
    )
});

/// Deletes every key of a job (its share links with them) and leaves its tombstone.
/// KEYS: meta, logs, ws, idx, flush, share, deleted. ARGV: tombstone ttl, owner, org
/// ('' none), now (ms). Answers the job's WebSocket connection ids, for the caller to
/// close.
pub(super) static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local conns = redis.call('HKEYS', KEYS[3])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local t = {'owner', ARGV[2], 'at', ARGV[4]}
if ARGV[3] ~= '' then t[5] = 'org'; t[6] = ARGV[3] end
redis.call('HSET', KEYS[7], unpack(t))
redis.call('EXPIRE', KEYS[7], ARGV[1])
return conns
",
    )
});

/// Registers a WebSocket connection with a job that exists (a `$connect` racing the
/// job's deletion must not leave a connection hash behind), and for a share link only
/// while the job's share generation is still the link's (a `$connect` racing
/// [`REVOKE_SHARES`] must not stay connected). KEYS: ws, meta, share. ARGV:
/// connection, the value to record (its token's expiry, ms, 0 none; a share link's
/// followed by `:` and its generation), ttl, the link's generation ('' none). Answers
/// 1 when registered, 0 when the job is gone, 2 when the link was revoked.
pub(super) static FOLLOW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Revokes every share link of a job: its share generation goes up by one, or is
/// `ARGV[2]` (random) when none is on record (kept `ARGV[1]` seconds), and the
/// WebSocket connections that followed the job with a link (their recorded value has a
/// `:`) leave its hash. KEYS: share, ws. Answers the new generation, then those
/// connections, for the caller to close.
pub(super) static REVOKE_SHARES: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local g
if redis.call('EXISTS', KEYS[1]) == 1 then
  g = redis.call('INCR', KEYS[1])
else
  g = ARGV[2]
  redis.call('SET', KEYS[1], g)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local r = {tostring(g)}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if string.find(all[i + 1], ':', 1, true) then
    redis.call('HDEL', KEYS[2], all[i])
    r[#r + 1] = all[i]
  end
end
return r
",
    )
});

/// Takes a job's flush lease if it is free. KEYS: flush. ARGV: token, lease (ms).
/// Answers 1 when taken.
pub(super) static LEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
",
    )
});

/// Gives a flush lease back, if it is still the caller's. KEYS: flush. ARGV: token.
pub(super) static RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Sets `archived` on a job's meta hash, unless the hash has expired meanwhile (a plain
/// HSET would recreate it without a TTL). KEYS: meta.
pub(super) static MARK_ARCHIVED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'archived', '1')
return 1
",
    )
});

/// A Lua script, sent as `EVALSHA` and, when the node answers `NOSCRIPT`, as `EVAL`
/// (which also caches it there). Both are routed by the first key, so in a cluster the
/// script runs, and gets cached, on the node that owns the job's slot.
pub(super) struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    pub(super) fn key(&self, key: impl ToRedisArgs) -> LuaCall<'_> {
        let mut call = LuaCall {
            lua: self,
            keys: Vec::new(),
            cmd: None,
            line: String::new(),
        };
        call.key(key);
        call
    }
}

/// One invocation of a [`Lua`] script: its keys, then its arguments.
pub(super) struct LuaCall<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    /// The `EVALSHA` command, begun at the first argument (the keys, all known by then,
    /// come before the arguments) so that arguments are written into it as they come:
    /// an append's hundred entries are copied once, not into a list first.
    cmd: Option<Cmd>,
    /// An argument being put together from pieces (see [`Self::arg_parts`]).
    line: String,
}

impl LuaCall<'_> {
    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        debug_assert!(
            self.cmd.is_none(),
            "a script's keys come before its arguments"
        );
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(self.evalsha());
        self
    }

    /// Room for more arguments of these sizes, so that adding them does not grow the
    /// command again and again.
    pub(super) fn reserve(&mut self, sizes: impl IntoIterator<Item = usize>) -> &mut Self {
        self.evalsha().reserve_space_for_args(sizes);
        self
    }

    /// One argument made of `parts` written one after the other.
    pub(super) fn arg_parts(&mut self, parts: &[&str]) -> &mut Self {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        parts.iter().for_each(|part| line.push_str(part));
        self.evalsha().arg(line.as_bytes());
        self.line = line;
        self
    }

    fn evalsha(&mut self) -> &mut Cmd {
        let (lua, keys) = (self.lua, &self.keys);
        self.cmd.get_or_insert_with(|| evalsha(lua, keys))
    }

    pub(super) async fn invoke<T: FromRedisValue>(&self, conn: &mut Conn) -> redis::RedisResult<T> {
        let without_args;
        let evalsha = match &self.cmd {
            Some(cmd) => cmd,
            None => {
                without_args = evalsha(self.lua, &self.keys);
                &without_args
            }
        };
        match evalsha.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // The same command with the script's code in place of its hash.
                let mut eval = redis::cmd("EVAL");
                eval.arg(self.lua.code);
                for arg in evalsha.args_iter().skip(2) {
                    if let Arg::Simple(arg) = arg {
                        eval.arg(arg);
                    }
                }
                eval.query_async(conn).await
            }
            other => other,
        }
    }
}

/// `EVALSHA` of `lua` with `keys`, without arguments yet.
fn evalsha(lua: &Lua, keys: &[Vec<u8>]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&lua.hash).arg(keys.len()).arg(keys);
    cmd
}
