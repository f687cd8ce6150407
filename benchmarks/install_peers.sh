#!/usr/bin/env bash
# `make peers`: install the engines the study compares fastvec with, from scratch.
#
#   EnvPool    from PyPI (a wheel) into the project's venv.
#   PufferLib  3.0.0's setup.py downloads a C library while it builds and fails without
#              internet, so it is not pip-installed: its pure-Python vectorizers are taken
#              from the unpacked sdist into benchmarks/.peers/pufferlib-3.0.0 (git-ignored),
#              with gym 0.26 in benchmarks/.peers/site. The study puts both on sys.path of
#              the PufferLib measurement's child process only; nothing else sees them.
#
# Every peer ends with a line in benchmarks/.peers/status.json: installed (with its version)
# or unavailable (with the reason). The study reports an unavailable peer as such; it never
# drops one silently. This script exits 0 either way: a missing peer is a result.
set -u
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
PY="$(cd "$(dirname "$(command -v "$PY")")" && pwd)/$(basename "$PY")"  # absolute: we cd below
PEERS=benchmarks/.peers
PUFFERLIB_VERSION=${PUFFERLIB_VERSION:-3.0.0}
GYM_SPEC="gym==0.26.2"
mkdir -p "$PEERS"
STATUS="$PEERS/status.json"
echo '{}' > "$STATUS"

# record NAME STATUS VERSION REASON: one entry of status.json
record() {
    "$PY" - "$STATUS" "$@" <<'EOF'
import json, sys
path, name, status, version, reason = sys.argv[1:6]
data = json.load(open(path))
data[name] = {"status": status, "version": version or None, "reason": reason or None}
json.dump(data, open(path, "w"), indent=2)
EOF
    if [ "$2" = installed ]; then echo "peers: $1 $3 installed"; else echo "peers: $1 UNAVAILABLE: $4"; fi
}

# last_line FILE: the last non-empty line, the usual place of an error's reason
last_line() { grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-300; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- EnvPool ---------------------------------------------------------------------------------
if "$PY" -m pip install -q envpool >"$work/envpool.log" 2>&1; then
    if "$PY" -W ignore - >"$work/envpool-check.log" 2>&1 <<'EOF'
import envpool, numpy as np
env = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=2, batch_size=2, seed=0)
env.reset()
env.step(np.zeros(2, dtype=np.int64))
env.close()
print(envpool.__version__)
EOF
    then
        record envpool installed "$(tail -n 1 "$work/envpool-check.log")" ""
    else
        record envpool unavailable "" "installed, but stepping CartPole-v1 failed: $(last_line "$work/envpool-check.log")"
    fi
else
    record envpool unavailable "" "pip install envpool failed: $(last_line "$work/envpool.log")"
fi

# --- PufferLib -------------------------------------------------------------------------------
# pip download prepares the sdist's metadata by running setup.py, which downloads raylib and
# fails offline; --no-clean keeps the unpacked tree pip made before that, in our TMPDIR.
mkdir -p "$work/tmp"
TMPDIR="$work/tmp" "$PY" -m pip download --no-clean --no-deps --no-binary pufferlib --no-build-isolation \
    -d "$work/dl" "pufferlib==$PUFFERLIB_VERSION" >"$work/puffer.log" 2>&1
src=""
if [ -f "$work/dl/pufferlib-$PUFFERLIB_VERSION.tar.gz" ]; then  # online: the download succeeded
    tar -C "$work" -xzf "$work/dl/pufferlib-$PUFFERLIB_VERSION.tar.gz"
    src="$work/pufferlib-$PUFFERLIB_VERSION"
else
    found=$(find "$work/tmp" -maxdepth 4 -path '*/pufferlib/vector.py' -print -quit)
    [ -n "$found" ] && src=$(dirname "$(dirname "$found")")
fi
dest="$PEERS/pufferlib-$PUFFERLIB_VERSION"
if [ -z "$src" ] || [ ! -f "$src/pufferlib/vector.py" ]; then
    record pufferlib unavailable "" "pip could not fetch the pufferlib $PUFFERLIB_VERSION sdist: $(last_line "$work/puffer.log")"
else
    rm -rf "$dest" && mkdir -p "$dest"
    # the 72 MB of game assets in pufferlib/resources are not needed by the vectorizers
    tar -C "$src" --exclude=pufferlib/resources -cf - pufferlib | tar -C "$dest" -xf -
    if ! "$PY" -m pip install -q --no-deps --upgrade --target "$PEERS/site" "$GYM_SPEC" gym-notices \
        >"$work/gym.log" 2>&1; then
        record pufferlib unavailable "" "pip install $GYM_SPEC (needed by pufferlib.spaces) failed: $(last_line "$work/gym.log")"
    elif ! "$PY" -c "import psutil" 2>/dev/null && ! "$PY" -m pip install -q psutil >"$work/psutil.log" 2>&1; then
        record pufferlib unavailable "" "pip install psutil failed: $(last_line "$work/psutil.log")"
    else
        # PufferLib's __init__ makes a 'resources' symlink in the working directory: run it in PEERS
        if (cd "$PEERS" && PYTHONPATH="site:pufferlib-$PUFFERLIB_VERSION" "$PY" -W ignore - \
            >"$work/puffer-check.log" 2>&1 <<'EOF'
import sys
import gymnasium, numpy as np
import pufferlib, pufferlib.emulation, pufferlib.vector

def creator(buf=None, seed=0):
    return pufferlib.emulation.GymnasiumPufferEnv(env_creator=gymnasium.make, env_args=["CartPole-v1"], buf=buf, seed=seed)

vecenv = pufferlib.vector.make([creator] * 2, env_args=[[]] * 2, env_kwargs=[{}] * 2,
                               backend=pufferlib.vector.Serial, num_envs=2)
vecenv.reset(seed=0)
vecenv.step(np.zeros(2, dtype=np.int64))
vecenv.close()
print(pufferlib.__version__)
EOF
        ); then
            record pufferlib installed "$PUFFERLIB_VERSION" ""
        else
            record pufferlib unavailable "" "unpacked, but stepping CartPole-v1 failed: $(last_line "$work/puffer-check.log")"
        fi
    fi
fi

echo "peers: status in $STATUS"
