// storeflow "Recommended products" block: asks the recommender through the app proxy for the products of
// this page (a product, or the cart's), renders the ones the store has titles for, and reports which were
// seen (one impression event per render) and which was clicked, through the same proxy. Shopify signs
// every proxied request with the shop and the logged-in customer: no token lives in the page.
(function () {
  "use strict";

  const GID = "gid://shopify/Product/";

  function post(root, path, body, keepalive) {
    return fetch(`${root.dataset.proxy}${path}`, {
      method: "POST",
      credentials: "same-origin",
      keepalive: Boolean(keepalive),
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
  }

  function feedback(root, event, shown, product) {
    const body = { event, model_version: root.dataset.modelVersion, request_id: root.dataset.requestId,
                   products: shown, page: root.dataset.products.split(",").filter(Boolean).map((id) => GID + id) };
    if (product) body.product = product;
    return post(root, "/v1/feedback", body, true).catch(() => undefined); // feedback never breaks the page
  }

  function card(root, item, shown) {
    const li = document.createElement("li");
    li.className = "storeflow-recs__item";
    const link = document.createElement("a");
    link.href = `${root.dataset.root.replace(/\/$/, "")}/products/${encodeURIComponent(item.handle)}`;
    link.textContent = item.title; // text, never HTML: titles come from the store's data
    link.dataset.productId = item.id;
    link.addEventListener("click", () => feedback(root, "click", shown, item.id));
    li.appendChild(link);
    return li;
  }

  async function load(root) {
    const ids = (root.dataset.products || "").split(",").filter((id) => /^\d+$/.test(id));
    if (!ids.length) return;
    const k = Math.min(Math.max(parseInt(root.dataset.count, 10) || 4, 1), 50);
    let answer;
    try {
      const res = await post(root, `/v1/models/${root.dataset.model}:predict`,
                             { instances: [{ products: ids.map((id) => GID + id), k }] });
      if (!res.ok) return; // the block stays hidden: the page works without it
      answer = await res.json();
    } catch (err) {
      return;
    }
    const items = (answer.predictions[0].items || []).filter((item) => item.title && item.handle);
    if (!items.length) return;
    root.dataset.modelVersion = answer.model_version || "";
    root.dataset.requestId = answer.request_id || "";
    const shown = items.map((item) => item.id);
    const list = root.querySelector(".storeflow-recs__list");
    list.replaceChildren(...items.map((item) => card(root, item, shown)));
    root.hidden = false;
    root.dataset.state = "rendered";
    feedback(root, "impression", shown);
  }

  function start() {
    document.querySelectorAll("[data-storeflow-recommendations]").forEach((root) => { load(root); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
