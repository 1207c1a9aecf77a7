"""HTTP: the request head, its grammar and the CGI environment; plain requests (static files, CGI, the dev console, redirects)."""
