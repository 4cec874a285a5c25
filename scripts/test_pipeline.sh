#!/usr/bin/env bash
# Send a signed GitHub push event for a registered repository to the gateway, as GitHub would,
# then follow the pipeline it starts until it ends.
#
#   GITHUB_WEBHOOK_SECRET=... ./scripts/test_pipeline.sh --repo https://github.com/you/repo
#
# Options (or the environment variable in brackets):
#   --repo URL          repository URL as registered with POST /repos        [REPO_URL]
#   --branch NAME       branch the push went to (default main)               [BRANCH]
#   --notebook PATH     notebook path in the repository                      [NOTEBOOK_PATH]
#                       (default notebooks/example_notebook.ipynb)
#   --commit SHA        pushed commit (default: the branch head, via git)    [COMMIT_SHA]
#   --gateway URL       gateway base URL (default http://localhost:8000)     [GATEWAY_URL]
#   --timeout SECONDS   how long to follow the pipeline (default 900)        [TIMEOUT_S]
#   --dry-run           print the body and its signature header; send nothing
# The secret is GITHUB_WEBHOOK_SECRET, else the one `make run` generated in
# ${MLOPS_DATA_DIR:-.mlops-data}/webhook_secret. MLOPS_API_KEY, when set, is sent as a bearer
# token. Exit status: 0 succeeded, 1 failed or cancelled, 2 nothing started, 3 timed out.
set -euo pipefail

repo="${REPO_URL:-}"
branch="${BRANCH:-main}"
notebook="${NOTEBOOK_PATH:-notebooks/example_notebook.ipynb}"
commit="${COMMIT_SHA:-}"
gateway="${GATEWAY_URL:-http://localhost:8000}"
timeout_s="${TIMEOUT_S:-900}"
dry_run=false

die() { echo "test_pipeline.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --repo) repo="$2"; shift 2 ;;
    --branch) branch="$2"; shift 2 ;;
    --notebook) notebook="$2"; shift 2 ;;
    --commit) commit="$2"; shift 2 ;;
    --gateway) gateway="${2%/}"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ -n "$repo" ] || die "--repo (or REPO_URL) is required"

secret="${GITHUB_WEBHOOK_SECRET:-}"
secret_file="${MLOPS_DATA_DIR:-.mlops-data}/webhook_secret"
if [ -z "$secret" ] && [ -r "$secret_file" ]; then
  secret="$(tr -d '\n' < "$secret_file")"
fi
[ -n "$secret" ] || die "set GITHUB_WEBHOOK_SECRET (or run 'make run' once to generate $secret_file)"

if [ -z "$commit" ]; then
  commit="$(git ls-remote "$repo" "refs/heads/$branch" 2>/dev/null | cut -f1)"
  [ -n "$commit" ] || die "could not read the head of $branch in $repo: pass --commit SHA"
fi

json_string() {  # a JSON string literal for $1
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

# owner/name for a GitHub-style URL; the gateway also matches on the clone URL itself.
full_name="$(printf '%s' "$repo" | sed -E 's#^[a-z+]+://[^/]+/##; s#^git@[^:]+:##; s#\.git$##; s#/+$##')"
case "$repo" in
  http://*|https://*|git@*) ;;
  *) full_name="" ;;
esac

body_file="$(mktemp)"
trap 'rm -f "$body_file"' EXIT
printf '{"ref":%s,"after":%s,"repository":{"full_name":%s,"clone_url":%s,"html_url":%s},"head_commit":{"id":%s},"commits":[{"id":%s,"added":[],"removed":[],"modified":[%s]}],"deleted":false}' \
  "$(json_string "refs/heads/$branch")" "$(json_string "$commit")" "$(json_string "$full_name")" "$(json_string "$repo")" \
  "$(json_string "$repo")" "$(json_string "$commit")" "$(json_string "$commit")" \
  "$(json_string "$notebook")" > "$body_file"

# GitHub's X-Hub-Signature-256: HMAC-SHA256 of the exact bytes sent, in hex. (openssl takes
# the key as an argument only: it is on its command line for the instant it runs.)
signature="sha256=$(openssl dgst -sha256 -hmac "$secret" < "$body_file" | awk '{print $NF}')"

if $dry_run; then
  cat "$body_file"
  printf '\nX-Hub-Signature-256: %s\n' "$signature"
  exit 0
fi

auth=()  # expanded as ${auth[@]+...}: bash before 4.4 calls an empty array unbound
[ -z "${MLOPS_API_KEY:-}" ] || auth=(-H "Authorization: Bearer $MLOPS_API_KEY")
delivery="$(cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen 2>/dev/null || date +%s%N)"

echo "POST $gateway/webhook/github  push $branch@${commit:0:12} $notebook"
response="$(curl -sS -X POST "$gateway/webhook/github" \
  -H "Content-Type: application/json" \
  -H "X-GitHub-Event: push" \
  -H "X-GitHub-Delivery: $delivery" \
  -H "X-Hub-Signature-256: $signature" \
  --data-binary "@$body_file" -w '\n%{http_code}')"
code="${response##*$'\n'}"
response="${response%$'\n'*}"
echo "HTTP $code $response"
[ "$code" = 202 ] || exit 2

pipeline="$(printf '%s' "$response" | sed -nE 's/.*"pipeline_ids":\["([^"]+)".*/\1/p')"
if [ -z "$pipeline" ]; then
  # The same push already started a pipeline (a replayed body starts nothing): follow that one.
  pipeline="$(printf '%s' "$response" | sed -nE 's/.*"duplicate_of":\["([^"]+)".*/\1/p')"
  [ -z "$pipeline" ] || echo "this push already ran as pipeline $pipeline: following it"
fi
[ -n "$pipeline" ] || die "no pipeline started: is $repo registered (GET $gateway/repos) for branch $branch and notebook $notebook?"
echo "pipeline $pipeline   logs: $gateway/pipelines/$pipeline/logs   live: ws${gateway#http}/ws/pipelines/$pipeline/logs"

field() {  # a top-level string field of the JSON in $2
  printf '%s' "$2" | sed -nE "s/.*\"$1\":\"([^\"]*)\".*/\1/p" | head -n1
}

start=$SECONDS
last=""
while [ $((SECONDS - start)) -lt "$timeout_s" ]; do
  details="$(curl -sS ${auth[@]+"${auth[@]}"} "$gateway/pipelines/$pipeline")"
  status="$(field status "$details")"
  if [ "$status" != "$last" ]; then
    printf '%4ss  %s\n' "$((SECONDS - start))" "${status:-?}"
    last="$status"
  fi
  case "$status" in
    succeeded)
      echo "served: $(field model_name "$details") version $(field model_version "$details")"
      exit 0 ;;
    failed|cancelled)
      [ "$status" = cancelled ] || echo "failed in $(field stage "$details"): $(field message "$details")"
      echo "details: $gateway/pipelines/$pipeline   logs: $gateway/pipelines/$pipeline/logs"
      exit 1 ;;
  esac
  sleep 1
done
echo "still ${last:-unknown} after ${timeout_s}s: $gateway/pipelines/$pipeline"
exit 3
