// Package natsperm is least privilege on NATS (DESIGN.md §11): one NATS
// user per service, whose publish and subscribe permissions cover only the
// subjects it publishes, its own durable consumer, the JetStream API calls
// of the buckets it uses, its own reply inbox and its nats micro
// endpoints. Creating or deleting streams, consumers and buckets belongs
// to the setup user of the one-shot set-up step (`leviathan setup`).
//
// The table here is the one source: the deployments' nats.conf is rendered
// from it (Conf; a test keeps the file in the repository equal), and tests
// start an embedded server with it (ServerUsers).
package natsperm

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// The users besides the five services.
const (
	// SetupUser runs `leviathan setup` (and operators' `leviathan config`,
	// `nats stream ...`): it may do anything.
	SetupUser = "setup"
	// ClientUser submits and follows attempts (`leviathan submit --wait`,
	// `leviathan watch`, the proof Job, `nats req leviathan.api.submit`,
	// `nats micro ls`).
	ClientUser = "client"
)

// Services are the service users, one per service.
var Services = []string{"clone", "backlog-edit", "push", "pr", "projector"}

// Users are every user of a deployment, in a stable order.
func Users() []string { return append(append([]string{}, Services...), ClientUser, SetupUser) }

// InboxPrefix is the reply-subject prefix of a service's connection: its
// own, so that no other user may subscribe to its replies.
func InboxPrefix(user string) string { return "_INBOX_" + user }

// Permissions are one user's, in NATS terms.
type Permissions struct {
	Publish, PublishDeny     []string
	Subscribe, SubscribeDeny []string
	// AllowResponses lets the user answer requests it received (nats
	// micro endpoints) without a publish permission on the reply subject.
	AllowResponses bool
}

const (
	api    = "$JS.API."
	stream = stage.StreamName
)

// set collects subjects without duplicates.
type set map[string]bool

func (s set) add(subjects ...string) {
	for _, x := range subjects {
		s[x] = true
	}
}

func (s set) list() []string {
	out := make([]string, 0, len(s))
	for x := range s {
		out = append(out, x)
	}
	sort.Strings(out)
	return out
}

// streamRead reads a stream's configuration and single messages.
func streamRead(pub set, name string) {
	pub.add(api+"STREAM.INFO."+name, api+"STREAM.MSG.GET."+name, api+"DIRECT.GET."+name, api+"DIRECT.GET."+name+".>")
}

// kvRead reads keys of a bucket; kvWrite puts, creates and deletes them.
func kvRead(pub set, bucket string) { streamRead(pub, "KV_"+bucket) }

func kvWrite(pub set, bucket string) {
	kvRead(pub, bucket)
	pub.add("$KV." + bucket + ".>")
}

// kvWatch follows a bucket's keys (an ordered consumer on its stream).
func kvWatch(pub set, bucket string) { orderedConsumers(pub, "KV_"+bucket) }

// orderedConsumers creates, reads and deletes ephemeral consumers of a
// stream and answers their flow control: what an ordered consumer or an
// object Get does.
//
// Only the named form of CONSUMER.CREATE (stream.consumer[.filter]): on
// the bare CONSUMER.CREATE.<stream> the server takes the consumer's name
// from the request body, which no deny list can see, so it could rewrite
// or delete a stage's durable consumer.
func orderedConsumers(pub set, name string) {
	pub.add(api+"CONSUMER.CREATE."+name+".>", api+"CONSUMER.INFO."+name+".*",
		api+"CONSUMER.DELETE."+name+".*", api+"CONSUMER.MSG.NEXT."+name+".*", "$JS.FC."+name+".>")
}

// objRead gets objects of a bucket; objWrite puts them too.
func objRead(pub set, bucket string) {
	streamRead(pub, "OBJ_"+bucket)
	orderedConsumers(pub, "OBJ_"+bucket)
}

func objWrite(pub set, bucket string) {
	objRead(pub, bucket)
	pub.add("$O."+bucket+".>", api+"STREAM.PURGE.OBJ_"+bucket)
}

// durable pulls from and acks a stage's durable consumer, and hears when
// one of its messages runs out of deliveries.
func durable(pub, sub set, name string) {
	pub.add(api+"CONSUMER.INFO."+stream+"."+name, api+"CONSUMER.MSG.NEXT."+stream+"."+name, "$JS.ACK."+stream+"."+name+".>")
	sub.add(stage.MaxDeliveriesSubject(name))
}

// emits publishes events of types (and receives the stream's acks on the
// service's inbox).
func emits(pub set, types ...events.Type) {
	for _, t := range types {
		pub.add(events.SubjectFilter(t))
	}
}

// micro answers nats micro's discovery for service name, and its status
// endpoint (stage.Register).
func micro(sub set, name string) {
	sub.add("leviathan.svc." + name + ".status")
	for _, verb := range []string{"PING", "INFO", "STATS"} {
		sub.add("$SRV."+verb, "$SRV."+verb+".leviathan-"+name, "$SRV."+verb+".leviathan-"+name+".*")
	}
}

// For returns the permissions of user; ok is false for an unknown user.
func For(user string) (p Permissions, ok bool) {
	pub, sub := set{}, set{}
	sub.add(InboxPrefix(user) + ".>")
	// Every service binds to the stream and every bucket at start
	// (stage.Open): reading their configuration, not their data.
	pub.add(api + "STREAM.INFO." + stream)
	for _, b := range []string{"OBJ_" + stage.SnapshotBucket, "OBJ_" + stage.ProjectorBucket, "KV_" + stage.AttemptsBucket,
		"KV_" + stage.ConfigBucket, "KV_" + stage.LocksBucket} {
		pub.add(api + "STREAM.INFO." + b)
	}
	switch user {
	case SetupUser:
		return Permissions{Publish: []string{">"}, Subscribe: []string{">"}}, true
	case ClientUser:
		// Submit through clone's endpoint or by publishing a request,
		// follow attempts with ordered consumers, list the services;
		// replies on the usual _INBOX, as the nats CLI uses.
		sub = set{"_INBOX.>": true}
		pub.add("leviathan.api.submit", "leviathan.svc.*.status", "$SRV.>")
		// `nats pub` of a bare request, as users submit too (clone
		// validates it as it validates any request).
		emits(pub, events.AttemptRequested)
		streamRead(pub, stream)
		orderedConsumers(pub, stream)
		return Permissions{Publish: pub.list(), PublishDeny: durableDenies(), Subscribe: sub.list()}, true
	case "clone":
		durable(pub, sub, "clone")
		emits(pub, events.AttemptRequested, events.AttemptRejected, events.AttemptCreated, events.AttemptStarted,
			events.RepoFetched, events.AttemptFailed, events.RequestDuplicate)
		streamRead(pub, stream)
		// Erasing a request that carried a credential.
		pub.add(api + "STREAM.MSG.DELETE." + stream)
		kvWrite(pub, stage.AttemptsBucket)
		objWrite(pub, stage.SnapshotBucket)
		sub.add("leviathan.api.submit")
	case "backlog-edit":
		durable(pub, sub, "backlog-edit")
		emits(pub, events.BacklogEdited, events.BacklogUnchanged, events.AttemptSucceeded, events.AttemptFailed)
		streamRead(pub, stream)
		kvRead(pub, stage.AttemptsBucket)
		objWrite(pub, stage.SnapshotBucket)
	case "push":
		durable(pub, sub, "push")
		pub.add(events.OpenForTaskSubject) // asks pr before pushing
		emits(pub, events.BranchPushed, events.AttemptSucceeded, events.AttemptFailed)
		streamRead(pub, stream)
		kvRead(pub, stage.AttemptsBucket)
		kvRead(pub, stage.ConfigBucket)
		objRead(pub, stage.SnapshotBucket)
	case "pr":
		durable(pub, sub, "pr")
		sub.add(events.OpenForTaskSubject)
		emits(pub, events.PRCreated, events.AttemptSucceeded, events.AttemptFailed)
		streamRead(pub, stream)
		kvRead(pub, stage.AttemptsBucket)
		kvRead(pub, stage.ConfigBucket)
		kvWrite(pub, stage.LocksBucket)
		kvWatch(pub, stage.LocksBucket)
	case "projector":
		// Reads the whole stream; publishes what the API records
		// (ingest, invalidate), never an event a stage consumes. Reads
		// the targets' policies (GET /v1/autonomy/status).
		streamRead(pub, stream)
		orderedConsumers(pub, stream)
		kvRead(pub, stage.ConfigBucket)
		orderedConsumers(pub, "KV_"+stage.ConfigBucket)
		objWrite(pub, stage.ProjectorBucket)
		pub.add(events.StreamSubjects, events.RecordSubjects)
		return Permissions{Publish: pub.list(), PublishDeny: append(durableDenies(), stageInputDenies()...),
			Subscribe: append(sub.list(), microSubjects("projector")...), AllowResponses: true}, true
	default:
		return Permissions{}, false
	}
	micro(sub, user)
	return Permissions{Publish: pub.list(), Subscribe: sub.list(), AllowResponses: true}, true
}

func microSubjects(name string) []string {
	sub := set{}
	micro(sub, name)
	return sub.list()
}

// durableDenies keep a user that may use ephemeral consumers of the
// stream off the stages' durable ones.
func durableDenies() []string {
	var out []string
	for _, name := range []string{"clone", "backlog-edit", "push", "pr"} {
		for _, verb := range []string{"CONSUMER.MSG.NEXT.", "CONSUMER.DELETE.", "CONSUMER.CREATE."} {
			out = append(out, api+verb+stream+"."+name)
		}
		out = append(out, api+"CONSUMER.CREATE."+stream+"."+name+".>", "$JS.ACK."+stream+"."+name+".>")
	}
	return out
}

// stageInputDenies are the subjects of the events the stages consume.
func stageInputDenies() []string {
	var out []string
	for _, t := range events.StageInputs {
		out = append(out, events.SubjectFilter(t))
	}
	sort.Strings(out)
	return out
}

// ServerPermissions converts p for an embedded nats-server.
func (p Permissions) ServerPermissions() *server.Permissions {
	sp := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: p.Publish, Deny: p.PublishDeny},
		Subscribe: &server.SubjectPermission{Allow: p.Subscribe, Deny: p.SubscribeDeny},
	}
	if p.AllowResponses {
		sp.Response = &server.ResponsePermission{MaxMsgs: 1}
	}
	return sp
}

// ServerUsers are every user with its password (from password) for an
// embedded nats-server's Options.Users.
func ServerUsers(password func(user string) string) []*server.User {
	var out []*server.User
	for _, u := range Users() {
		p, _ := For(u)
		out = append(out, &server.User{Username: u, Password: password(u), Permissions: p.ServerPermissions()})
	}
	return out
}

// Conf renders the authorization block of nats.conf: every user, its
// password the environment variable passwordVar(user) of the server's
// container (from a Secret), and its permissions.
func Conf(passwordVar func(user string) string) string {
	var b strings.Builder
	b.WriteString("# Generated from internal/natsperm: do not edit; after changing it there, run\n")
	b.WriteString("# `go test ./internal/natsperm -update`. One user per service, each allowed\n")
	b.WriteString("# only what it does (README \"Security\").\n")
	b.WriteString("authorization {\n users: [\n")
	for _, u := range Users() {
		p, _ := For(u)
		fmt.Fprintf(&b, "  {\n    user: %q\n    password: $%s\n    permissions: {\n", u, passwordVar(u))
		writeList(&b, "publish", p.Publish, p.PublishDeny)
		writeList(&b, "subscribe", p.Subscribe, p.SubscribeDeny)
		if p.AllowResponses {
			b.WriteString("      allow_responses: true\n")
		}
		b.WriteString("    }\n  }\n")
	}
	b.WriteString(" ]\n}\n")
	return b.String()
}

func writeList(b *strings.Builder, name string, allow, deny []string) {
	fmt.Fprintf(b, "      %s: {\n", name)
	for _, part := range []struct {
		key  string
		subs []string
	}{{"allow", allow}, {"deny", deny}} {
		if len(part.subs) == 0 {
			continue
		}
		fmt.Fprintf(b, "        %s: [\n", part.key)
		for _, s := range slices.Sorted(slices.Values(part.subs)) {
			fmt.Fprintf(b, "          %q\n", s)
		}
		b.WriteString("        ]\n")
	}
	b.WriteString("      }\n")
}

// PasswordVar is the environment variable of a user's password in the
// NATS server's container: NATS_PASSWORD_CLONE, NATS_PASSWORD_BACKLOG_EDIT.
func PasswordVar(user string) string {
	return "NATS_PASSWORD_" + strings.ToUpper(strings.ReplaceAll(user, "-", "_"))
}
