// The API behind the servers of bench S9 and S10: one port, two protocols.
//
// Pushpin's WebSocket-over-HTTP (a POST whose Content-Type is
// application/websocket-events): OPEN is answered with OPEN, TEXT and BINARY
// are echoed, CLOSE with the same CLOSE, PING with PONG.
//
// wsexec's --callback: GET (connect) answers 200 "ok", POST (a message)
// answers 200 with the body and its Content-Type, DELETE (disconnect) 200.
//
//	origin -listen 127.0.0.1:0
//
// prints "listening on HOST:PORT" once it accepts. Standard library only.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
)

const eventsType = "application/websocket-events"

// maxBody bounds what one request may carry (the benchmarks send 32 bytes).
const maxBody = 16 << 20

// appendEvent writes one event: "NAME\r\n", or "NAME HEXLEN\r\nDATA\r\n".
func appendEvent(out []byte, name string, data []byte, hasData bool) []byte {
	out = append(out, name...)
	if hasData {
		out = append(out, ' ')
		out = strconv.AppendInt(out, int64(len(data)), 16)
		out = append(out, "\r\n"...)
		out = append(out, data...)
	}
	return append(out, "\r\n"...)
}

// answerEvents reads the events of one Pushpin request and returns the answer's.
func answerEvents(in []byte) ([]byte, error) {
	var out []byte
	for len(in) > 0 {
		end := bytes.Index(in, []byte("\r\n"))
		if end < 0 {
			return nil, fmt.Errorf("event without CRLF")
		}
		head := in[:end]
		in = in[end+2:]
		name, hexlen, hasData := bytes.Cut(head, []byte(" "))
		var data []byte
		if hasData {
			n, err := strconv.ParseInt(string(hexlen), 16, 32)
			if err != nil || int(n)+2 > len(in) {
				return nil, fmt.Errorf("bad event length %q", hexlen)
			}
			data = in[:n]
			in = in[n+2:]
		}
		switch string(name) {
		case "OPEN":
			out = appendEvent(out, "OPEN", nil, false)
		case "TEXT", "BINARY", "CLOSE":
			out = appendEvent(out, string(name), data, hasData)
		case "PING":
			out = appendEvent(out, "PONG", data, hasData)
		}
		// PONG and DISCONNECT need no answer.
	}
	return out, nil
}

func serve(w http.ResponseWriter, r *http.Request) {
	var body []byte
	if r.Method == http.MethodPost {
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil || len(body) > maxBody {
			http.Error(w, "body unreadable or too large", http.StatusRequestEntityTooLarge)
			return
		}
	}
	kind := r.Header.Get("Content-Type")
	switch {
	case r.Method == http.MethodPost && kind == eventsType: // Pushpin
		out, err := answerEvents(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", eventsType)
		w.Write(out)
	case r.Method == http.MethodGet: // wsexec: connect
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok")
	case r.Method == http.MethodPost: // wsexec: a message, echoed
		w.Header().Set("Content-Type", kind)
		w.Write(body)
	case r.Method == http.MethodDelete: // wsexec: disconnect
		w.WriteHeader(http.StatusOK)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "listening on %s\n", ln.Addr())
	os.Stdout.Sync()
	log.Fatal(http.Serve(ln, http.HandlerFunc(serve)))
}
