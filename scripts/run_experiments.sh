#!/usr/bin/env bash
# Runs scripts/run_experiments.py with the first python3 on PATH, as its
# "#!/usr/bin/env python3" line would. See that file or --help for the options.
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec /usr/bin/env python3 "${script_dir}/run_experiments.py" "$@"
