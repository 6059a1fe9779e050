# The Statuspage API test reads a node with a real Statuspage client: the `statuspage.io`
# npm package (pinned; 3.4.x ships no code and wants node >= 21), run with node.
need_deb /usr/bin/node nodejs
need_deb /usr/bin/npm npm
STATUSPAGE_CLIENT_VERSION=3.3.8
statuspage_client() {
  local dir=target/statuspage-client
  if grep -qs "\"version\": \"$STATUSPAGE_CLIENT_VERSION\"" "$dir/node_modules/statuspage.io/package.json"; then
    return 0
  fi
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
    "statuspage.io@$STATUSPAGE_CLIENT_VERSION" >/dev/null
}
after_install+=(statuspage_client)
