package orchestrator

import (
	"context"
	"testing"
	"time"
)

func TestFolderDropsAStartedWhoseCompletionArrivesInTheWindow(t *testing.T) {
	f := folder{waiting: map[string]chan struct{}{}}
	done := make(chan bool)
	go func() { done <- f.started(context.Background(), "run/step/1") }()
	for {
		f.mu.Lock()
		_, ok := f.waiting["run/step/1"]
		f.mu.Unlock()
		if ok {
			break
		}
		time.Sleep(50 * time.Microsecond)
	}
	f.completing("run/step/1")
	if !<-done {
		t.Fatal("started was not folded into the completion that arrived in its window")
	}
	if len(f.waiting) != 0 {
		t.Errorf("waiting = %v, want empty", f.waiting)
	}
}

func TestFolderKeepsAStartedWithoutCompletion(t *testing.T) {
	f := folder{waiting: map[string]chan struct{}{}}
	f.completing("run/other/1") // another attempt's completion changes nothing
	start := time.Now()
	if f.started(context.Background(), "run/step/1") {
		t.Fatal("started folded without a completion")
	}
	if d := time.Since(start); d < foldWindow {
		t.Errorf("started gave up after %s, before the %s window", d, foldWindow)
	}
	if len(f.waiting) != 0 {
		t.Errorf("waiting = %v, want empty", f.waiting)
	}
}
