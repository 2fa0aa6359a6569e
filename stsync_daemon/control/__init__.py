"""The local control channel: versioned HTTP/JSON over a Unix socket, served to stsyncctl."""
