package localforge

import (
	"context"
	"html"
	"html/template"
	"regexp"
	"strings"
	"time"
)

// The pull request page renders the body as GitHub would show it, for the
// subset Leviathan writes (headings, lists, paragraphs, `code`, **bold**)
// and without HTML comments (the hidden task marker), and shows the diff.
// Everything from the body is escaped first; only the tags made here are
// markup.

var (
	htmlComment = regexp.MustCompile(`(?s)<!--.*?-->`)
	inlineCode  = regexp.MustCompile("`([^`]+)`")
	bold        = regexp.MustCompile(`\*\*([^*]+)\*\*`)
	heading     = regexp.MustCompile(`^(#{1,6})\s+(.*)$`)
	listItem    = regexp.MustCompile(`^\s*[-*]\s+(.*)$`)
)

// renderMarkdown renders body's subset of markdown as safe HTML.
func renderMarkdown(body string) template.HTML {
	body = htmlComment.ReplaceAllString(body, "")
	var b strings.Builder
	inList := false
	var para []string
	flush := func() {
		if len(para) > 0 {
			b.WriteString("<p>" + inline(strings.Join(para, " ")) + "</p>\n")
			para = nil
		}
		if inList {
			b.WriteString("</ul>\n")
			inList = false
		}
	}
	for _, line := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n") {
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case heading.MatchString(line):
			flush()
			m := heading.FindStringSubmatch(line)
			level := string(rune('0' + min(len(m[1])+2, 6))) // a PR's headings sit under the page's
			b.WriteString("<h" + level + ">" + inline(m[2]) + "</h" + level + ">\n")
		case listItem.MatchString(line):
			if len(para) > 0 {
				b.WriteString("<p>" + inline(strings.Join(para, " ")) + "</p>\n")
				para = nil
			}
			if !inList {
				b.WriteString("<ul>\n")
				inList = true
			}
			b.WriteString("<li>" + inline(listItem.FindStringSubmatch(line)[1]) + "</li>\n")
		default:
			if inList {
				flush()
			}
			para = append(para, strings.TrimSpace(line))
		}
	}
	flush()
	return template.HTML(b.String()) // every piece of the body went through inline's escaping
}

// inline escapes s, then marks up `code` and **bold**.
func inline(s string) string {
	s = html.EscapeString(s)
	s = inlineCode.ReplaceAllString(s, "<code>$1</code>")
	return bold.ReplaceAllString(s, "<strong>$1</strong>")
}

// maxDiff bounds the diff a page shows.
const maxDiff = 256 << 10

// diffLine is one line of a shown diff, with its kind for the colour.
type diffLine struct {
	Text, Kind string // Kind: add, del, hunk, meta or ""
}

// pullDiff is the diff of a pull request, base to head, as lines.
func (f *Forge) pullDiff(ctx context.Context, owner, name string, pr PullRequest) []diffLine {
	if pr.BaseSHA == "" || pr.HeadSHA == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := gitOutput(ctx, f.RepoDir(owner, name), nil, "diff", "--no-color", "--no-ext-diff", pr.BaseSHA+"..."+pr.HeadSHA, "--")
	if err != nil {
		f.log.Warn("pull request diff", "repo", owner+"/"+name, "number", pr.Number, "err", err)
		return nil
	}
	truncated := len(out) > maxDiff
	if truncated {
		out = out[:maxDiff]
	}
	var lines []diffLine
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		kind := ""
		switch {
		case strings.HasPrefix(l, "+++"), strings.HasPrefix(l, "---"), strings.HasPrefix(l, "diff "), strings.HasPrefix(l, "index "):
			kind = "meta"
		case strings.HasPrefix(l, "@@"):
			kind = "hunk"
		case strings.HasPrefix(l, "+"):
			kind = "add"
		case strings.HasPrefix(l, "-"):
			kind = "del"
		}
		lines = append(lines, diffLine{Text: l, Kind: kind})
	}
	if truncated {
		lines = append(lines, diffLine{Text: "… (diff truncated)", Kind: "meta"})
	}
	return lines
}
