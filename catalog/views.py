from django.conf import settings
from django.http import HttpResponsePermanentRedirect
from django.views.generic import DetailView, ListView

from .browse import BrowseQuery, product_breadcrumbs
from .models import Product


class ProductListView(ListView):
    template_name = "catalog/product_list.html"
    context_object_name = "products"
    paginate_by = settings.CATALOG_PAGE_SIZE

    def get_queryset(self):
        self.browse = BrowseQuery.from_params(self.request.GET)
        return self.browse.products().with_images()

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        page = context["page_obj"]
        context.update(
            browse=self.browse,
            facets=self.browse.facet_blocks(),
            page_urls={
                "previous": self.browse.url(page=str(page.previous_page_number())) if page.has_previous() else "",
                "next": self.browse.url(page=str(page.next_page_number())) if page.has_next() else "",
            },
        )
        return context


class ProductDetailView(DetailView):
    template_name = "catalog/product_detail.html"
    context_object_name = "product"

    def get_queryset(self):
        return Product.objects.with_images()

    def get(self, request, *args, **kwargs):
        self.object = self.get_object()
        if kwargs.get("slug") != self.object.slug:  # keep the query: ?same_colour=1 and the like
            query = request.META.get("QUERY_STRING", "")
            return HttpResponsePermanentRedirect(self.object.get_absolute_url() + (f"?{query}" if query else ""))
        return self.render_to_response(self.get_context_data(object=self.object))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["breadcrumbs"] = product_breadcrumbs(self.object)
        return context
