"""`clipsearch serve`: the HTTP server and its web page (server, web/), thumbnails, and the
local socket that lets `query` use a warm server. Over search; never imports index or tag."""
