# Sourced by scripts/demo.sh and scripts/test.sh: installs what paysim needs on Debian/Ubuntu
# (with SETUP_FOR_TESTS=1, as test.sh sets it, also what only the tests need).
# Idempotent: a second run checks and installs nothing new.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PAYSIM="$VENV/bin/paysim"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

java_ok() {
  local java="${JAVA_HOME:+$JAVA_HOME/bin/}java" version
  command -v "$java" >/dev/null 2>&1 || return 1
  version=$("$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [[ -n $version && $version -ge 17 ]]
}

# A Python 3.11+ with venv and ensurepip, the distribution's own first: Debian's and Ubuntu's
# interpreters are built with profile-guided and link-time optimization, which pyenv's default
# build is not, and ran paysim's services on a sixth to a fifth less CPU (docs/performance.md).
# Ubuntu 22.04's python3 is 3.10, so its python3.11 is looked for too.
python_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
    "$1" -c 'import ensurepip, venv' >/dev/null 2>&1
}

distribution_python() {
  local candidate
  for candidate in /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11; do
    if [[ -x $candidate ]] && python_ok "$candidate"; then echo "$candidate"; return 0; fi
  done
  return 1
}

find_python() {
  distribution_python && return 0
  local candidate
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

python_packages() {
  if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo python3 python3-venv
  else
    echo python3.11 python3.11-venv
  fi
}

# What compiling paysim's hot modules needs and this machine lacks: a C compiler and the
# headers of the Python the venv is made from (python3.X-dev for Python 3.X).
# Without a Python yet, the headers of the one python_packages would install.
compiler_packages() {
  local python
  command -v gcc >/dev/null 2>&1 || echo gcc libc6-dev
  if ! python=$(find_python); then
    python_packages | sed 's/ .*//; s/$/-dev/'
    return 0
  fi
  "$python" -c 'import os, sys, sysconfig
if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
    print("python%d.%d-dev" % sys.version_info[:2])'
}

# apt-get install as root, with the package lists updated once a run.
APT_UPDATED=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED -eq 0 ]]; then
    apt-get update -qq || return 1
    APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "$@"
}

# The first Java 17+ runtime package this release of Debian/Ubuntu offers.
java_package() {
  local candidate
  for candidate in openjdk-17-jre-headless openjdk-21-jre-headless openjdk-25-jre-headless; do
    if apt-cache show "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
  echo default-jre-headless
}

install_system_packages() {
  local packages=() need_java=0 installed_redis=0
  if ! command -v redis-server >/dev/null 2>&1; then packages+=(redis-server); installed_redis=1; fi
  command -v mvn >/dev/null 2>&1 || packages+=(maven)
  # The benchmark's HTTP phase (and its test) loads the HTTP API with wrk.
  command -v wrk >/dev/null 2>&1 || packages+=(wrk)
  if [[ ${SETUP_FOR_TESTS:-0} == 1 ]]; then
    # The dashboard's browser test: headless Chromium driven by Selenium through chromedriver.
    command -v chromium >/dev/null 2>&1 || packages+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
  fi
  # The distribution's Python (see find_python), unless another will do and apt is not ours.
  if ! distribution_python >/dev/null && { [[ $(id -u) -eq 0 ]] || ! find_python >/dev/null; }; then
    read -ra python_pkgs <<< "$(python_packages)"
    packages+=("${python_pkgs[@]}")
  fi
  java_ok || need_java=1
  if [[ ${#packages[@]} -eq 0 && $need_java -eq 0 ]]; then return 0; fi
  if [[ $need_java -eq 1 && $(id -u) -ne 0 ]]; then packages+=(openjdk-17-jre-headless); fi
  if [[ $(id -u) -ne 0 ]]; then
    # One command for everything, the compiler's packages too, rather than a second later.
    read -ra compiler_pkgs <<< "$(compiler_packages | tr '\n' ' ')"
    packages+=("${compiler_pkgs[@]}")
    die "missing ${packages[*]}: run 'sudo apt-get update && sudo apt-get install -y ${packages[*]}', then this again"
  fi
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${packages[*]} and Java 17+ by hand"
  # Java first in the list: Maven then takes it rather than pulling in another runtime.
  if [[ $need_java -eq 1 ]]; then packages=("$(java_package)" "${packages[@]}"); fi
  say "installing ${packages[*]}"
  apt_install "${packages[@]}" >/dev/null
  if [[ $installed_redis -eq 1 ]] && command -v systemctl >/dev/null 2>&1 &&
     systemctl is-active --quiet redis-server 2>/dev/null; then
    # The package starts a system redis on 6379 where systemd runs; paysim runs its own.
    say "stopping the system redis-server service: paysim runs its own on 127.0.0.1:6379"
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  java_ok || die "Java 17+ is still missing after installing; set JAVA_HOME to a Java 17+ JDK"
  find_python >/dev/null || die "no Python 3.11+ with venv after installing; install one"
}

# The compiled modules' toolchain (after the Python it compiles for is there): optional for
# the demo, which then runs as pure Python; the tests check the builds, so they need it.
install_compiler() {
  local packages
  read -ra packages <<< "$(compiler_packages | tr '\n' ' ')"
  [[ ${#packages[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${packages[*]} (to compile paysim's hot modules)"
    if apt_install "${packages[@]}" >/dev/null; then
      return 0
    fi
  fi
  if [[ ${SETUP_FOR_TESTS:-0} == 1 ]]; then
    die "missing ${packages[*]} (the tests check paysim's compiled modules): run 'sudo apt-get install -y ${packages[*]}', then this again"
  fi
  say "missing ${packages[*]}: paysim runs as pure Python ('sudo apt-get install -y ${packages[*]}' and this again compile its hot modules)"
}

install_paysim() {
  local python venv_base
  python=$(find_python)
  if [[ -x $VENV/bin/python ]]; then
    # A venv made from another interpreter (a pyenv build, before the distribution's was
    # preferred) is made again from this one.
    venv_base=$("$VENV/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null || true)
    if [[ $venv_base != "$(realpath "$python")" ]]; then
      say "recreating $VENV with $python (it was made with ${venv_base:-an interpreter that is gone})"
      rm -rf "$VENV"
    fi
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV with $python"
    "$python" -m venv "$VENV"
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  local stamp="$VENV/.paysim-installed" digest
  digest=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$digest" ]]; then
    say "installing paysim and its dependencies into $VENV"
    # Output to a log: setuptools' warnings about editable installs are noise here.
    local log="$VENV/pip-install.log"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e "$ROOT[test,compiled]"; } > "$log" 2>&1; then
      tail -n 20 "$log" >&2
      die "pip could not install paysim (full log: $log)"
    fi
    echo "$digest" > "$stamp"
  fi
}

# The hot modules compiled with Cython into the venv (paysim/infra/compiled.py); only those
# changed since the last build. Without a C compiler paysim runs as pure Python.
compile_paysim() {
  "$VENV/bin/python" "$ROOT/scripts/compile_modules.py" || true
}

install_system_packages
install_compiler
install_paysim
compile_paysim
"$PAYSIM" stack prepare
