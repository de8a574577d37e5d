// choreo console: live updates over server-sent events, and confirmations. Plain JavaScript,
// nothing fetched from anywhere but the console.
(() => {
  const body = document.body;
  const status = document.getElementById('status');
  document.addEventListener('submit', (event) => {
    const ask = event.target.dataset.confirm;
    if (ask && !window.confirm(ask)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  });
  const source = body.dataset.live;
  if (source && window.EventSource) {
    // A page's stream takes the page's own filters.
    const search = location.search.slice(1);
    const url = search ? source + (source.includes('?') ? '&' : '?') + search : source;
    const events = new EventSource(url);
    // A form on its way must not be cut short by a reload.
    document.addEventListener('submit', () => events.close());
    // A page left behind (kept in the back-forward cache, say) must not keep its connection:
    // a browser opens six at most to one host, and the next page would wait for one.
    window.addEventListener('pagehide', () => events.close());
    events.addEventListener('status', (event) => { status.innerHTML = event.data; });
    events.addEventListener('fragment', (event) => {
      const live = document.getElementById('live');
      if (live) live.innerHTML = event.data;
    });
    events.addEventListener('version', (event) => {
      if (body.dataset.version !== undefined && event.data !== body.dataset.version) location.reload();
    });
    events.onerror = () => {
      if (events.readyState !== EventSource.OPEN) {
        status.innerHTML = '<div class="banner down"><strong>The console is not answering.</strong> ' +
          'This page reconnects by itself.</div>';
      }
    };
  }
})();
