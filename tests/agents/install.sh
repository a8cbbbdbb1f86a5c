#!/usr/bin/env bash
# Install the real coding agents that tests/integration/test_agents.py drives:
# Claude Code and Codex CLI, at pinned versions, from the npm registry, into
# tests/agents/installed/ (git-ignored). Idempotent: when the pinned versions are
# already there and run, it does nothing and needs no network.
#
# Both packages ship their native binary as a per-platform optional dependency
# (@anthropic-ai/claude-code-linux-x64, @openai/codex-linux-x64 = the
# npm:@openai/codex@<version>-linux-x64 alias, and so on), so npm alone installs
# them: no download outside the registry. Claude Code's postinstall (install.cjs)
# links that binary over its bin/claude.exe placeholder; the check below catches a
# placeholder left behind.
set -euo pipefail

CLAUDE_CODE_VERSION="2.1.197"
CODEX_VERSION="0.171.0"

here="$(cd "$(dirname "$0")" && pwd)"
prefix="$here/installed"
bin="$prefix/node_modules/.bin"

if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    echo "tests/agents/install.sh: Node.js and npm are needed to install Claude Code and Codex CLI" \
         "for tests/integration/test_agents.py (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi

installed_version() {  # the version a package.json under the prefix declares, or nothing
    node -e 'try { process.stdout.write(require(process.argv[1]).version) } catch (e) {}' \
        "$prefix/node_modules/$1/package.json"
}

is_current() {
    [ "$(installed_version @anthropic-ai/claude-code)" = "$CLAUDE_CODE_VERSION" ] &&
    [ "$(installed_version @openai/codex)" = "$CODEX_VERSION" ] &&
    "$bin/claude" --version 2>/dev/null | grep -qF "$CLAUDE_CODE_VERSION" &&
    "$bin/codex" --version 2>/dev/null | grep -qF "$CODEX_VERSION"
}

if is_current; then
    echo "coding agents: Claude Code $CLAUDE_CODE_VERSION and Codex CLI $CODEX_VERSION already in $prefix"
    exit 0
fi

mkdir -p "$prefix"
npm install --no-audit --no-fund --no-update-notifier --save-exact --prefix "$prefix" \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION"

# npm 11 warns that this postinstall is "not yet covered by allowScripts"; should a
# later npm skip it, run it ourselves (it only links the native binary into place).
if ! "$bin/claude" --version >/dev/null 2>&1; then
    (cd "$prefix/node_modules/@anthropic-ai/claude-code" && node install.cjs)
fi

if ! is_current; then
    echo "tests/agents/install.sh: installed, but 'claude --version' / 'codex --version' do not print" \
         "$CLAUDE_CODE_VERSION / $CODEX_VERSION (a missing native optional dependency, or a skipped" \
         "postinstall of @anthropic-ai/claude-code?)" >&2
    "$bin/claude" --version >&2 || true
    "$bin/codex" --version >&2 || true
    exit 1
fi
echo "coding agents: Claude Code $CLAUDE_CODE_VERSION and Codex CLI $CODEX_VERSION installed in $prefix"
