/**
 * NeuroNova ingest: "Open in viewer" on Orthanc Explorer's study and series pages, opening the OHIF
 * Viewer the plugin serves at <prefix>/neuronova/viewer/ in a new tab (Explorer is at <prefix>/app/).
 */
(function () {
  'use strict';

  var viewerBase = new URL('../neuronova/viewer/viewer', window.location.href).href;
  var korean = /^ko\b/i.test(navigator.language || '');
  var label = korean ? '뷰어에서 열기' : 'Open in viewer';

  function addButton(page, idOfResource, url) {
    page.find('.neuronova-viewer-open').remove();
    var button = $('<a>')
      .attr({href: '#', 'data-role': 'button', 'data-icon': 'search', 'data-theme': 'b',
             'class': 'neuronova-viewer-open', title: 'OHIF Viewer (NeuroNova)'})
      .text(label);
    // Above the page's action buttons (Delete, Download...), like Orthanc's own OHIF plugin.
    var anchor = page.find('#' + idOfResource + '-info');
    (anchor.length ? button.insertAfter(anchor) : button.prependTo(page.find('[data-role="content"]').first()))
      .button();
    button.on('click', function (event) {
      event.preventDefault();
      var opened = window.open('', '_blank');  // now, while the click counts: a popup blocker allows it
      url(function (target) { opened.location.href = target; }, function () {
        opened.close();
        window.alert('NeuroNova: this resource cannot be opened in the viewer.');
      });
    });
  }

  /** Orthanc's JSON of a resource (jQuery 1.7's then() does not chain: callbacks instead). */
  function resource(level, id, done, failed) {
    $.ajax({url: '../' + level + '/' + id, dataType: 'json', cache: false, success: done, error: failed});
  }

  $(document).on('pagebeforeshow', '#study', function () {
    var id = $.mobile.pageData && $.mobile.pageData.uuid;
    addButton($(this), 'study', function (done, failed) {
      resource('studies', id, function (study) {
        done(viewerBase + '?StudyInstanceUIDs=' + encodeURIComponent(study.MainDicomTags.StudyInstanceUID));
      }, failed);
    });
  });

  $(document).on('pagebeforeshow', '#series', function () {
    var id = $.mobile.pageData && $.mobile.pageData.uuid;
    addButton($(this), 'series', function (done, failed) {
      resource('series', id, function (series) {
        resource('studies', series.ParentStudy, function (study) {
          done(viewerBase + '?StudyInstanceUIDs=' + encodeURIComponent(study.MainDicomTags.StudyInstanceUID) +
            '&initialSeriesInstanceUID=' + encodeURIComponent(series.MainDicomTags.SeriesInstanceUID));
        }, failed);
      }, failed);
    });
  });
})();
