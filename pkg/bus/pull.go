package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The pull protocol is spoken here rather than through
// jetstream.Consumer.Next because Next opens and closes a subscription and
// a goroutine for every message, which costs a handler slot 15 to 30 µs per
// message on the way in; a slot's own long-lived subscription costs a few.

const (
	// pullExpires is how long one pull request waits on the server.
	pullExpires = 30 * time.Second
	// pullHeartbeat is how often the server confirms a waiting request;
	// two missed in a row mean the request is lost.
	pullHeartbeat = 5 * time.Second
	// quietLimit is how long a waiting request may go without a heartbeat
	// before it counts as lost: two heartbeats, longer than a stream
	// leader election takes (4 to 7 s on 2 cores).
	quietLimit = 2 * pullHeartbeat
)

// pullRequest asks for one message: a slot never asks for more than it can
// run.
var pullRequest = fmt.Appendf(nil, `{"batch":1,"expires":%d,"idle_heartbeat":%d}`, pullExpires, pullHeartbeat)

// errPullLost reports a pull request that the server may no longer hold: no
// heartbeat came for quietLimit.
var errPullLost = errors.New("pull request lost: no heartbeat from the server")

// puller is what the slots of one [Consume] share: the connection, the
// consumer's next-message subject, and word of reconnections.
type puller struct {
	nc   *nats.Conn
	next string

	mu          sync.Mutex
	reconnected chan struct{} // closed, and replaced, on every reconnection
	status      chan nats.Status
	done        chan struct{} // closed when the consumer stops
}

func newPuller(js jetstream.JetStream, stream, durable string) *puller {
	opts := js.Options()
	prefix := jetstream.DefaultAPIPrefix
	switch {
	case opts.Domain != "":
		prefix = "$JS." + opts.Domain + ".API."
	case opts.APIPrefix != "":
		prefix = strings.TrimSuffix(opts.APIPrefix, ".") + "."
	}
	p := &puller{nc: js.Conn(), next: prefix + "CONSUMER.MSG.NEXT." + stream + "." + durable,
		reconnected: make(chan struct{}), done: make(chan struct{})}
	p.status = p.nc.StatusChanged(nats.CONNECTED)
	go func() {
		for range p.status {
			p.mu.Lock()
			close(p.reconnected)
			p.reconnected = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	return p
}

// close stops listening for reconnections and ends the retired
// subscriptions; call it once every slot has closed.
func (p *puller) close() {
	p.nc.RemoveStatusListener(p.status)
	close(p.done)
}

func (p *puller) reconnection() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reconnected
}

// slot is one handler slot's subscription. It keeps one pull request of
// one message waiting on the server, so it holds one message (for up to
// pullExpires after a reconnection, possibly two). A request that may be
// lost (no heartbeat for quietLimit, as
// when the consumer's new leader does not know it) is replaced together
// with its subscription, so a late answer to the old request never reaches
// a slot that asked again: it is handed back (see [slot.retire]).
type slot struct {
	p       *puller
	sub     *nats.Subscription
	ch      chan *nats.Msg
	pending int // requests on the server not yet answered
}

// receive returns the next message for the slot, asking the server for it
// if no request is waiting. It returns nats.ErrTimeout when the request
// expired without a message, and ctx's error when ctx ends.
func (s *slot) receive(ctx context.Context) (jetstream.Msg, error) {
	if s.sub == nil {
		s.ch = make(chan *nats.Msg, 8)
		sub, err := s.p.nc.ChanSubscribe(s.p.nc.NewInbox(), s.ch)
		if err != nil {
			return nil, fmt.Errorf("subscribe for pulled messages: %w", err)
		}
		s.sub, s.pending = sub, 0
	}
	if s.pending == 0 {
		if err := s.p.nc.PublishRequest(s.p.next, s.sub.Subject, pullRequest); err != nil {
			return nil, fmt.Errorf("pull request: %w", err)
		}
		s.pending = 1
	}
	// A reconnection does not retire the request: the consumer's leader
	// may still hold it, and nats.go re-establishes the subscription it
	// answers to. Retiring every slot's request on each reconnection left
	// as many live requests on the server as slots, whose answers were
	// nak'd on arrival, so one message bounced through them until it ran
	// out of deliveries. Instead the slot asks again on the same
	// subscription, in case the new leader does not know the request, and
	// counts only the new one: at worst both are answered, and the slot
	// takes the second message on its next turn (a redelivery meanwhile is
	// a duplicate its handler tolerates); a request is never renewed, so
	// such a surplus lasts at most pullExpires. A request the server lost
	// stops getting heartbeats and is replaced after quietLimit.
	quiet := time.NewTimer(quietLimit)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.p.reconnection():
			if err := s.p.nc.PublishRequest(s.p.next, s.sub.Subject, pullRequest); err != nil {
				return nil, fmt.Errorf("pull request: %w", err)
			}
			s.pending = 1
			quiet.Reset(quietLimit)
		case <-quiet.C:
			s.retire()
			return nil, errPullLost
		case m := <-s.ch:
			status := m.Header.Get("Status")
			if status == "" {
				if m.Reply == "" {
					continue // not a JetStream message
				}
				s.pending = max(s.pending-1, 0)
				return &pulled{m: m, nc: s.p.nc}, nil
			}
			if status == "100" { // idle heartbeat: the request still waits
				quiet.Reset(quietLimit)
				continue
			}
			s.pending = max(s.pending-1, 0)
			desc := m.Header.Get("Description")
			switch {
			case status == "408", status == "404":
				return nil, nats.ErrTimeout
			case status == "409" && strings.EqualFold(desc, "Consumer Deleted"):
				return nil, jetstream.ErrConsumerDeleted
			case status == "503":
				return nil, fmt.Errorf("pull request: %w", nats.ErrNoResponders)
			default:
				return nil, fmt.Errorf("pull request ended: %s %s", status, desc)
			}
		}
	}
}

// retire gives up the slot's subscription, to be replaced by a new one
// with a new request. A request it may still have waiting on the server
// could yet be answered: for as long as that request can live, whatever
// message reaches the old subscription is nak'd, so it is redelivered at
// once instead of vanishing until AckWait.
func (s *slot) retire() {
	if s.sub == nil {
		return
	}
	sub, ch := s.sub, s.ch
	s.sub, s.pending = nil, 0
	go s.p.handBack(sub, ch)
}

// handBack naks the messages reaching a retired subscription until its
// last request has expired or the consumer stops, then unsubscribes.
func (p *puller) handBack(sub *nats.Subscription, ch chan *nats.Msg) {
	t := time.NewTimer(pullExpires + pullHeartbeat)
	defer t.Stop()
	for {
		select {
		case m := <-ch:
			p.nakStray(m)
		case <-t.C:
			p.unsubscribe(sub, ch)
			return
		case <-p.done:
			p.unsubscribe(sub, ch)
			return
		}
	}
}

// unsubscribe ends sub and naks what it had received but not handed on.
func (p *puller) unsubscribe(sub *nats.Subscription, ch chan *nats.Msg) {
	_ = sub.Unsubscribe()
	for {
		select {
		case m := <-ch:
			p.nakStray(m)
		default:
			return
		}
	}
}

// nakStray hands a message no slot will run back to the server.
func (p *puller) nakStray(m *nats.Msg) {
	if m.Header.Get("Status") == "" && m.Reply != "" {
		_ = (&pulled{m: m, nc: p.nc}).Nak()
	}
}

// close ends the slot's subscription when its worker stops, handing back
// a message that arrived but was not taken.
func (s *slot) close() {
	if s.sub != nil {
		s.p.unsubscribe(s.sub, s.ch)
		s.sub, s.pending = nil, 0
	}
}

// pulled is a message received by a slot, acknowledged over the slot's
// connection with the JetStream ack protocol.
type pulled struct {
	m  *nats.Msg
	nc *nats.Conn

	mu      sync.Mutex
	settled bool
}

var _ jetstream.Msg = (*pulled)(nil)

// Metadata parses the ack subject, in its v1 form
// $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> or
// its v2 form, which adds the domain and account hash after $JS.ACK and a
// random token at the end.
func (p *pulled) Metadata() (*jetstream.MsgMetadata, error) {
	t := strings.Split(p.m.Reply, ".")
	if len(t) < 9 || t[0] != "$JS" || t[1] != "ACK" || (len(t) > 9 && len(t) < 11) {
		return nil, fmt.Errorf("%w: ack subject %q", jetstream.ErrNotJSMessage, p.m.Reply)
	}
	var domain string
	if len(t) >= 11 {
		domain = t[2]
		if domain == "_" {
			domain = ""
		}
		t = append(t[:2:2], t[4:]...)
	}
	num := func(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }
	md := &jetstream.MsgMetadata{Stream: t[2], Consumer: t[3], NumDelivered: num(t[4]),
		Timestamp: time.Unix(0, int64(num(t[7]))), NumPending: num(t[8]), Domain: domain}
	md.Sequence.Stream, md.Sequence.Consumer = num(t[5]), num(t[6])
	return md, nil
}

// Data returns the message body.
func (p *pulled) Data() []byte { return p.m.Data }

// Headers returns the message headers.
func (p *pulled) Headers() nats.Header { return p.m.Header }

// Subject returns the subject the message was published on.
func (p *pulled) Subject() string { return p.m.Subject }

// Reply returns the ack subject.
func (p *pulled) Reply() string { return p.m.Reply }

// Ack acknowledges the message.
func (p *pulled) Ack() error { return p.settle(context.Background(), []byte("+ACK"), false) }

// DoubleAck acknowledges the message and waits for the server to confirm.
func (p *pulled) DoubleAck(ctx context.Context) error {
	return p.settle(ctx, []byte("+ACK"), true)
}

// Nak asks for a redelivery now.
func (p *pulled) Nak() error { return p.settle(context.Background(), []byte("-NAK"), false) }

// NakWithDelay asks for a redelivery after delay.
func (p *pulled) NakWithDelay(delay time.Duration) error {
	return p.settle(context.Background(), fmt.Appendf(nil, `-NAK {"delay": %d}`, delay.Nanoseconds()), false)
}

// InProgress resets the message's ack timer.
func (p *pulled) InProgress() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.settled {
		return jetstream.ErrMsgAlreadyAckd
	}
	return p.nc.Publish(p.m.Reply, []byte("+WPI"))
}

// Term stops redeliveries of the message.
func (p *pulled) Term() error { return p.settle(context.Background(), []byte("+TERM"), false) }

// TermWithReason stops redeliveries of the message, giving the reason in
// the server's advisory.
func (p *pulled) TermWithReason(reason string) error {
	return p.settle(context.Background(), []byte("+TERM "+reason), false)
}

// settle sends one final ack (sync: and waits for the server's answer, 5s
// at most when ctx has no deadline). A message is settled once.
func (p *pulled) settle(ctx context.Context, body []byte, sync bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.settled {
		return jetstream.ErrMsgAlreadyAckd
	}
	if !sync {
		if err := p.nc.Publish(p.m.Reply, body); err != nil {
			return err
		}
		p.settled = true
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	if _, err := p.nc.RequestWithContext(ctx, p.m.Reply, body); err != nil {
		return err
	}
	p.settled = true
	return nil
}
